"""The dashboard's login: nothing but the login form before it, on every page; the admin key opens the dashboard,
a wrong one is refused without being shown; "Log out" closes it; ``BATCHGW_DASHBOARD_LOGIN=off`` (``batchgw
dashboard --no-login``) turns it off; an identity from an OIDC provider is let in when single sign-on is configured
(and its email allowed).

The rules (setting, allowed emails, which providers a secrets section configures) are tested as plain functions;
the pages with AppTest against a live gateway that ran a batch, and once in a real browser.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.runtime.secrets import Secrets
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from dashboard import auth
from dashboard.client import NO_KEY
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, free_port, simulated_provider_env
from tests.dashboard.conftest import (
    ADMIN_KEY,
    CHROMIUM,
    TIMEOUT_MS,
    app_test,
    browser_log_in,
    log_in,
    login_form_shown,
    require_browser,
    run_dashboard,
    submit_key,
)
from tests.engine import chat_requests, reset, submit, wait_for

PAGES = ("views/jobs.py", "views/job.py", "views/spend.py", "views/alerts.py", "views/advisor.py",
         "views/providers.py", "views/webhooks.py")  # fmt: skip
WRONG = "not-the-admin-key-0123456789"
METADATA_URL = "https://idp.example.com/.well-known/openid-configuration"
AUTH = {
    "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
    "cookie_secret": "a-cookie-secret-long-enough-for-signing",
    "client_id": "batch-gateway",
    "client_secret": "client-secret",
    "server_metadata_url": METADATA_URL,
}


# --- the rules, as plain functions ------------------------------------------------------------------------


def test_the_login_is_on_unless_the_setting_says_off() -> None:
    assert auth.login_required(None) and auth.login_required("") and auth.login_required(" On ")
    assert not auth.login_required("off") and not auth.login_required("OFF")
    for value in ("no", "false", "0", "of"):
        with pytest.raises(ValueError, match="BATCHGW_DASHBOARD_LOGIN must be on or off"):
            auth.login_required(value)
    unknown = auth.LoginSettings.load({auth.LOGIN_ENV: "false", "BATCHGW_ADMIN_KEY": ADMIN_KEY})
    assert unknown.required and unknown.problem and "'false'" in unknown.problem


def test_allowed_emails_admit_listed_verified_addresses_only() -> None:
    allowed = auth.allowed_emails(" Ops@Example.com, ,sre@example.com ")
    assert allowed == {"ops@example.com", "sre@example.com"}
    assert auth.email_allowed({"email": "OPS@example.com"}, allowed)
    assert auth.email_allowed({"email": "sre@example.com", "email_verified": True}, allowed)
    assert not auth.email_allowed({"email": "eve@example.com"}, allowed)
    assert not auth.email_allowed({"email": "ops@example.com", "email_verified": False}, allowed)
    assert not auth.email_allowed({"name": "no email"}, allowed)
    # No list: whoever the provider logged in.
    assert auth.allowed_emails(None) == frozenset() and auth.allowed_emails(" , ") == frozenset()
    assert auth.email_allowed({"name": "no email"}, frozenset())


def test_oidc_counts_as_configured_only_with_complete_settings() -> None:
    assert auth.oidc_providers({}) == []
    assert auth.oidc_providers(AUTH) == ["default"]
    assert auth.oidc_providers({k: v for k, v in AUTH.items() if k != "cookie_secret"}) == []
    assert auth.oidc_providers({k: v for k, v in AUTH.items() if k != "client_secret"}) == []
    provider = {k: AUTH[k] for k in auth.PROVIDER_KEYS}
    shared = {k: AUTH[k] for k in auth.SHARED_KEYS}
    named = shared | {"google": provider, "okta": {"client_id": "x"}, "my_idp": provider}
    assert auth.oidc_providers(named) == ["google"]  # okta is incomplete; Streamlit refuses "_" in names
    assert auth.provider_label("google", named) == "Google"
    assert auth.provider_label("default", AUTH) == "idp.example.com"


def test_oidc_detection_reads_the_secrets_file_and_survives_its_absence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def section(*files: Path) -> dict[str, Any]:
        monkeypatch.setattr(st, "secrets", Secrets())
        with patch_config_options({"secrets.files": [str(f) for f in files]}):
            return dict(auth.secrets_auth_section())

    assert section(tmp_path / "missing.toml") == {}
    (tmp_path / "broken.toml").write_text("[auth\n")
    assert section(tmp_path / "broken.toml") == {}
    (tmp_path / "other.toml").write_text('[connections.db]\nurl = "sqlite://"\n')
    assert section(tmp_path / "other.toml") == {}
    (tmp_path / "secrets.toml").write_text("[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in AUTH.items()))
    assert auth.oidc_providers(section(tmp_path / "missing.toml", tmp_path / "secrets.toml")) == ["default"]


def test_the_key_is_compared_whole_and_never_matches_when_unset() -> None:
    assert auth.key_matches(ADMIN_KEY, ADMIN_KEY)
    assert not auth.key_matches(ADMIN_KEY[:-1], ADMIN_KEY) and not auth.key_matches(ADMIN_KEY + "x", ADMIN_KEY)
    assert not auth.key_matches("", "") and not auth.key_matches(None, None) and not auth.key_matches("", ADMIN_KEY)
    assert auth.key_matches("clé-ünicode", "clé-ünicode") and not auth.key_matches("cle", "clé")


# --- the pages, with AppTest against a live gateway -------------------------------------------------------


@dataclass
class Finished:
    """A gateway that ran one batch to completion."""

    gateway: GatewayProcess
    batch_id: str


@pytest.fixture(scope="module")
def finished(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Finished]:
    providers = {"fastp": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), providers)
    env["BATCHGW_PROVIDERS__FASTP__CATALOG_PROVIDER"] = "openai"
    gateway: GatewayProcess = gateway_factory(env).start()
    client = gateway.client(gateway.create_key("acme"))
    batch = wait_for(client, submit(client, chat_requests(2, prefix="login")).id, timeout=30)
    assert batch.status == "completed", batch
    yield Finished(gateway, batch.id)
    reset(simulator, "fast")


def everything(at: AppTest) -> str:
    """Every text the run shows, main area and sidebar (not what was typed into the key field)."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error",
             "exception", "metric", "code", "expander", "dataframe", "table")  # fmt: skip
    parts = [str(getattr(e, "value", "")) + " " + str(getattr(e, "label", "")) for k in kinds for e in getattr(at, k)]
    return "\n".join(parts)


def assert_only_the_login_form(at: AppTest, *hidden: str) -> None:
    """The run shows the title and the login form, nothing of the dashboard, and none of ``hidden``."""
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["batch-gateway"]
    assert [t.key for t in at.text_input] == ["login_key"]
    assert [b.label for b in at.button] == ["Log in"]
    assert not (at.dataframe or at.metric or at.table or at.subheader or at.selectbox or at.expander)
    assert not at.sidebar.children, "the sidebar shows something before the login"
    text = everything(at)
    assert all(secret not in text for secret in hidden), text


def test_every_page_shows_only_the_login_form_before_login(finished: Finished, monkeypatch: pytest.MonkeyPatch) -> None:
    for page in PAGES:
        at = app_test(monkeypatch, finished.gateway.base_url)
        at.switch_page(page)
        at.query_params["batch"] = finished.batch_id
        at.run()
        assert_only_the_login_form(at, finished.batch_id, finished.gateway.base_url, ADMIN_KEY)
        assert not at.error and not at.warning and not at.info


def test_a_wrong_key_is_refused_and_shows_nothing_else(finished: Finished, monkeypatch: pytest.MonkeyPatch) -> None:
    at = app_test(monkeypatch, finished.gateway.base_url)
    at.switch_page("views/job.py")
    at.query_params["batch"] = finished.batch_id
    at.run()
    submit_key(at, WRONG)
    assert [e.value for e in at.error] == [auth.WRONG_KEY]
    assert_only_the_login_form(at, finished.batch_id, ADMIN_KEY)
    assert WRONG not in everything(at)
    submit_key(at, ADMIN_KEY[:-1])  # a prefix of the key is no key either
    assert [e.value for e in at.error] == [auth.WRONG_KEY]
    assert_only_the_login_form(at, finished.batch_id)


def test_the_admin_key_opens_the_jobs_page_and_log_out_closes_it(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = log_in(app_test(monkeypatch, finished.gateway.base_url))
    assert [t.value for t in at.title] == ["Jobs"] and not at.error
    jobs = next(d.value for d in at.dataframe if "job" in d.value.columns)
    assert list(jobs["job"]) == [f"job?batch={finished.batch_id}"]
    assert f"`{finished.gateway.base_url}`" in at.sidebar.caption[0].value
    assert ADMIN_KEY not in everything(at)
    at.switch_page("views/job.py")
    at.query_params["batch"] = finished.batch_id
    at.run()  # the same session: still logged in
    assert [t.value for t in at.title] == [f"Job {finished.batch_id}"]

    at.sidebar.button(key="logout").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert_only_the_login_form(at, finished.batch_id, finished.gateway.base_url)
    at.switch_page("views/spend.py")
    at.run()
    assert_only_the_login_form(at, finished.batch_id)


def test_wrong_keys_lock_the_session_after_a_few_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    at = app_test(monkeypatch, f"http://127.0.0.1:{free_port()}")
    at.run()
    for _ in range(auth.MAX_WRONG_KEYS - 1):
        submit_key(at, WRONG)
        assert [e.value for e in at.error] == [auth.WRONG_KEY]
    submit_key(at, WRONG)
    assert [e.value for e in at.error] == [auth.LOCKED]
    at.run()
    assert [e.value for e in at.error] == [auth.LOCKED] and not login_form_shown(at) and not at.button
    assert [t.value for t in at.title] == ["batch-gateway"]


def test_no_admin_key_means_no_login_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key to compare with, an empty field must not open the dashboard: there is no field."""
    at = app_test(monkeypatch, f"http://127.0.0.1:{free_port()}", key=None)
    at.run()
    assert [e.value for e in at.error] == [NO_KEY]
    assert not login_form_shown(at) and not at.button and not at.sidebar.children


def test_login_off_shows_the_dashboard_at_once(finished: Finished, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.LOGIN_ENV, "off")
    at = app_test(monkeypatch, finished.gateway.base_url)
    at.run()
    assert not at.exception and not login_form_shown(at)
    assert [t.value for t in at.title] == ["Jobs"]
    assert finished.batch_id in everything(at)
    assert not [b for b in at.sidebar.button if b.key == "logout"]


def test_an_unknown_login_setting_keeps_the_login_and_names_it(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(auth.LOGIN_ENV, "disabled")
    at = app_test(monkeypatch, finished.gateway.base_url)
    at.run()
    assert [w.value for w in at.warning] == [
        "BATCHGW_DASHBOARD_LOGIN must be on or off, not 'disabled': the login stays on."
    ]
    assert login_form_shown(at) and finished.batch_id not in everything(at)


def test_the_cli_refuses_an_unknown_login_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "dashboard", "--port", str(free_port())],
        env={k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
        | {auth.LOGIN_ENV: "disabled", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "BATCHGW_DASHBOARD_LOGIN must be on or off, not 'disabled'" in result.stderr


# --- single sign-on, with AppTest's identity in place of a provider ---------------------------------------


def oidc_app(monkeypatch: pytest.MonkeyPatch, url: str, user: dict[str, Any], allowed: str = "") -> AppTest:
    """The dashboard with an ``[auth]`` section and ``user`` as the identity ``st.user`` reads."""
    monkeypatch.setenv(auth.ALLOWED_EMAILS_ENV, allowed)
    at = app_test(monkeypatch, url)
    at.secrets = {"auth": dict(AUTH)}
    at.user = user
    return at


def test_single_sign_on_is_offered_and_its_identity_let_in(finished: Finished, monkeypatch: pytest.MonkeyPatch) -> None:
    at = oidc_app(monkeypatch, finished.gateway.base_url, {"is_logged_in": False})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ["Log in with idp.example.com", "Log in"]
    assert login_form_shown(at) and finished.batch_id not in everything(at)

    at = oidc_app(monkeypatch, finished.gateway.base_url, {"is_logged_in": True, "email": "Ops@example.com"},
                  allowed="ops@example.com")  # fmt: skip
    at.run()
    assert not at.exception and not login_form_shown(at)
    assert [t.value for t in at.title] == ["Jobs"] and finished.batch_id in everything(at)
    at.sidebar.button(key="logout").click().run()  # logs out of the provider's session too
    assert at.user == {"is_logged_in": False}
    assert login_form_shown(at) and finished.batch_id not in everything(at)


def test_an_identity_whose_email_is_not_allowed_sees_nothing(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = oidc_app(monkeypatch, finished.gateway.base_url, {"is_logged_in": True, "email": "eve@example.com"},
                  allowed="ops@example.com")  # fmt: skip
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["eve@example.com may not use this dashboard."]
    assert login_form_shown(at) and not at.dataframe and not at.sidebar.children
    assert finished.batch_id not in everything(at)


def test_an_identity_counts_only_when_single_sign_on_is_configured(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_test(monkeypatch, finished.gateway.base_url)
    at.user = {"is_logged_in": True, "email": "ops@example.com"}
    at.run()
    assert login_form_shown(at) and finished.batch_id not in everything(at)
    assert not [b for b in at.button if b.label.startswith("Log in with")]


# --- in a real browser ------------------------------------------------------------------------------------


def test_a_deep_link_asks_for_the_key_first_in_the_browser(finished: Finished, tmp_path: Path) -> None:
    sync_api = require_browser()
    from playwright.sync_api import expect

    with (
        run_dashboard(finished.gateway.base_url, tmp_path) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{url}/spend")
            field = page.get_by_label("Admin key", exact=True)
            field.wait_for()
            body = page.locator("body")
            expect(page.get_by_role("heading", name="batch-gateway")).to_be_visible()
            for hidden in ("Spend", "Spent", "Jobs", finished.gateway.base_url):
                expect(body).not_to_contain_text(hidden)
            expect(page.get_by_test_id("stSidebar")).to_have_count(0)

            browser_log_in(page, WRONG)
            expect(page.get_by_text(auth.WRONG_KEY)).to_be_visible()
            expect(body).not_to_contain_text("Spent")
            expect(body).not_to_contain_text(WRONG)
            assert page.url.endswith("/spend")

            browser_log_in(page)
            page.get_by_role("heading", name="Spend").first.wait_for()
            expect(page.get_by_text("Spent").first).to_be_visible()
            expect(field).to_have_count(0)
            assert page.url.endswith("/spend")

            page.goto(f"{url}/job?batch={finished.batch_id}")  # a new page load is a new session
            page.get_by_label("Admin key", exact=True).wait_for()
            expect(body).not_to_contain_text(finished.batch_id)
            browser_log_in(page)
            page.get_by_role("heading", name=f"Job {finished.batch_id}").wait_for()

            page.get_by_test_id("stSidebar").get_by_role("button", name="Log out").click()
            page.get_by_label("Admin key", exact=True).wait_for()
            expect(body).not_to_contain_text(finished.batch_id)
        finally:
            browser.close()


def test_no_login_shows_the_page_at_once_in_the_browser(finished: Finished, tmp_path: Path) -> None:
    """``batchgw dashboard --no-login``, for a dashboard behind an authenticating proxy."""
    sync_api = require_browser()
    from playwright.sync_api import expect

    with (
        run_dashboard(finished.gateway.base_url, tmp_path, "--no-login") as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{url}/spend")
            page.get_by_role("heading", name="Spend").first.wait_for()
            expect(page.get_by_text("Spent").first).to_be_visible()
            expect(page.get_by_label("Admin key", exact=True)).to_have_count(0)
            expect(page.get_by_role("button", name="Log out")).to_have_count(0)
        finally:
            browser.close()
    assert "no login: keep it behind an authenticating proxy" in (tmp_path / "dashboard.log").read_text()
