"""The dashboard's entry page: a clear message, never a traceback, when the gateway is down or the key is wrong."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import GatewayProcess, free_port
from tests.dashboard.conftest import ADMIN_KEY, app_test, log_in, login_form_shown

PAGES = (
    "views/jobs.py", "views/job.py", "views/spend.py", "views/alerts.py", "views/providers.py", "views/webhooks.py",
)  # fmt: skip


def rendered(at: AppTest) -> str:
    kinds = ("title", "markdown", "caption", "info", "success", "warning", "error", "exception")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(at, kind))


@pytest.mark.parametrize("page", PAGES)
def test_gateway_down_is_a_clear_message_on_every_page(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    at = app_test(monkeypatch, url)
    at.switch_page(page)
    log_in(at)
    assert not at.exception
    message = f"Cannot reach the gateway at {url} (ConnectError). Is it running?"
    assert at.error and all(e.value.endswith(message) for e in at.error), [e.value for e in at.error]
    assert not at.dataframe


def test_gateway_down_stops_at_the_entry_page(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    at = log_in(app_test(monkeypatch, url))
    assert not at.exception
    assert [e.value for e in at.error] == [f"Cannot reach the gateway at {url} (ConnectError). Is it running?"]
    assert any("batchgw serve" in c.value for c in at.main.caption)
    assert not at.dataframe and not at.metric


def test_wrong_admin_key_is_named_and_never_shown(gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "not-the-admin-key-0123456789"
    at = log_in(app_test(monkeypatch, gateway.base_url, key=wrong), key=wrong)  # the key the dashboard was given
    assert not at.exception
    assert len(at.error) == 1 and "The gateway refused the admin key" in at.error[0].value
    assert wrong not in rendered(at) and ADMIN_KEY not in rendered(at)
    assert not at.dataframe


def test_missing_admin_key_says_how_to_set_it(gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    at = app_test(monkeypatch, gateway.base_url, key=None)
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "No admin key: set BATCHGW_ADMIN_KEY (or pass --admin-key to batchgw dashboard)."
    ]
    assert not login_form_shown(at)  # no key to log in with


def test_empty_gateway_shows_empty_states(gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    at = log_in(app_test(monkeypatch, gateway.base_url))
    assert not at.exception and not at.error
    assert any("No jobs match these filters yet" in i.value for i in at.info)
    assert f"`{gateway.base_url}`" in at.sidebar.caption[0].value
    assert ADMIN_KEY not in rendered(at)
    at.switch_page("views/job.py")
    at.run()
    assert [i.value for i in at.info] == ["No jobs yet: nothing to show."]
    at.switch_page("views/alerts.py")
    at.run()
    assert not at.exception
    assert [s.value for s in at.success] == ["No open alerts."]
    assert "No budgets set yet." in [i.value for i in at.info]
