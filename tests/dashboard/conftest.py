"""A gateway on emulated providers, seeded once per module with real batches, for the dashboard tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai.types import Batch
from streamlit.testing.v1 import AppTest

from dashboard.client import AdminClient
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import chat_requests, reset, set_faults, submit, wait_for

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
ADMIN_KEY = "test-admin-key"  # what tests/conftest.py gives every gateway
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
