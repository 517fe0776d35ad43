"""A gateway on emulated providers, seeded once per module with real batches, for the dashboard tests; how the
tests log in to the dashboard (AppTest and a real browser) and run ``batchgw dashboard``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import Batch
from streamlit.testing.v1 import AppTest

from dashboard.client import AdminClient
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, free_port, loopback, simulated_provider_env
from tests.engine import chat_requests, reset, set_faults, submit, wait_for

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
ADMIN_KEY = "test-admin-key"  # what tests/conftest.py gives every gateway
CHROMIUM = Path("/usr/bin/chromium")  # Debian's
TIMEOUT_MS = 30_000
PROVIDERS: dict[str, dict[str, Any]] = {
    "fastp": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
    "flakyp": {"emulator": "other", "models": {"flaky-mini": "gpt-4o-mini"}},
    "slowp": {"emulator": "slow", "models": {"slow-mini": "gpt-4o-mini"}},
}
FLAKY_REQUESTS = 12
GLOBAL_LIMIT_USD = 0.00001
TEAM_LIMIT_USD = 0.00005


@pytest.fixture(scope="module")
def database_kind() -> str:
    """SQLite only: the dashboard sees the gateway through HTTP, and the admin API's database code is tested
    on every database in tests/api/test_admin_ops.py."""
    return "sqlite"


@dataclass
class Seeded:
    """The gateway and the batches it ran: one completed, one with failed requests, one still running."""

    gateway: GatewayProcess
    admin: AdminClient
    done: Batch
    flaky: Batch
    running: Batch
    keys: dict[str, str]


@pytest.fixture(scope="module")
def seeded(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """Half the ``flakyp`` requests fail (the emulator's ``fail_fraction``); ``slowp`` never finishes (``stall``)."""
    set_faults(simulator, "other", fail_fraction=0.5)
    set_faults(simulator, "slow", stall=True)
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)
    env["BATCHGW_PROVIDERS__FASTP__CATALOG_PROVIDER"] = "openai"  # priced as OpenAI's gpt-4o-mini: real costs
    gateway: GatewayProcess = gateway_factory(env).start()
    keys = {team: gateway.create_key(team) for team in ("acme", "globex")}
    admin = AdminClient(gateway.base_url, ADMIN_KEY)
    # A tiny global budget, so the first spend crosses its thresholds and raises alerts.
    admin.put_budget({"scope": "global", "period": "day", "limit_usd": GLOBAL_LIMIT_USD, "thresholds": [0.5, 1.0]})
    admin.put_budget({"scope": "team:acme", "period": "month", "limit_usd": TEAM_LIMIT_USD, "thresholds": [0.5, 0.8]})
    acme, globex = gateway.client(keys["acme"]), gateway.client(keys["globex"])
    done = submit(acme, chat_requests(6, prefix="done"))
    flaky = submit(globex, chat_requests(FLAKY_REQUESTS, model="flaky-mini", prefix="flaky"))
    running = submit(acme, chat_requests(4, model="slow-mini", prefix="slow"))
    try:
        done, flaky = wait_for(acme, done.id, timeout=30), wait_for(globex, flaky.id, timeout=30)
        running = wait_for(acme, running.id, lambda b: b.status == "in_progress", timeout=30)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n--- gateway log ---\n{gateway.log()[-4000:]}") from None
    assert done.status == "completed" and flaky.status == "completed", (done, flaky)
    assert flaky.request_counts is not None and 0 < flaky.request_counts.failed < FLAKY_REQUESTS
    yield Seeded(gateway, admin, done, flaky, running, keys)
    reset(simulator, *simulator.names())


def app_test(monkeypatch: pytest.MonkeyPatch, url: str, key: str | None = ADMIN_KEY) -> AppTest:
    """The dashboard's AppTest pointed at a gateway; ``key=None`` runs it without an admin key."""
    monkeypatch.setenv("BATCHGW_DASHBOARD_GATEWAY_URL", url)
    if key is None:
        monkeypatch.delenv("BATCHGW_ADMIN_KEY", raising=False)
    else:
        monkeypatch.setenv("BATCHGW_ADMIN_KEY", key)
    return AppTest.from_file(str(APP), default_timeout=30)


# --- logging in -------------------------------------------------------------------------------------------


def login_form_shown(at: AppTest) -> bool:
    """Whether the run rendered the login form's admin key field."""
    return any(t.key == "login_key" for t in at.text_input)


def submit_key(at: AppTest, key: str) -> AppTest:
    """Type ``key`` into the login form and press its button."""
    at.text_input(key="login_key").input(key)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def log_in(at: AppTest, key: str = ADMIN_KEY) -> AppTest:
    """Run the app, which opens on the login form, and log in with ``key`` as an operator would; the page the
    test switched to (with its query) then renders."""
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert login_form_shown(at), "the dashboard showed no login form"
    submit_key(at, key)
    assert not login_form_shown(at), [e.value for e in at.error]
    return at


def browser_log_in(page: Any, key: str = ADMIN_KEY) -> None:
    """On the login form the browser shows, type ``key`` and press "Log in"."""
    page.get_by_label("Admin key", exact=True).fill(key)
    page.get_by_role("button", name="Log in").click()
    page.mouse.move(0, 0)  # not left hovering over what the page shows next


# --- the dashboard in a real browser ----------------------------------------------------------------------


def require_browser() -> Any:
    """Playwright's sync API, or a skip (a failure in CI) when it or Chromium is missing.

    Its assertions wait as long as the pages' own waits: a loaded machine renders a page in more than
    Playwright's default 5 s."""
    problem = None
    try:
        from playwright import sync_api
    except ImportError:
        problem = "the playwright package is not installed"
    if problem is None and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    return sync_api


@contextlib.contextmanager
def run_dashboard(gateway_url: str, log_dir: Path, *options: str) -> Iterator[str]:
    """Run ``batchgw dashboard`` on a free port until the block ends; yields its URL once it is healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
    env["BATCHGW_ADMIN_KEY"] = ADMIN_KEY
    log_path = log_dir / "dashboard.log"
    command = [sys.executable, "-m", "gateway.cli", "dashboard", "--port", str(port)]
    command += ["--gateway-url", gateway_url, *options]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"dashboard exited:\n{log_path.read_text()}")
            try:
                if loopback.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"dashboard not up:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
