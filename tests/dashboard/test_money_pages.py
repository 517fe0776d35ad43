"""The dashboard's money views against a live gateway: a job held after its canary is released from its page, the
advisor estimates a job's input file with a recommendation, and budgets show what is reserved and left."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dashboard.client import AdminClient
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.dashboard.conftest import ADMIN_KEY, app_test
from tests.dashboard.test_pages import frame_with, run_page, texts
from tests.engine import chat_requests, create_batch, reset, set_faults, unbounded_requests, wait_for


@dataclass
class Held:
    gateway: GatewayProcess
    admin: AdminClient
    held_id: str
    done_id: str


@pytest.fixture(scope="module")
def held(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Held]:
    """A gateway where a 40-request job's default canary projects 10x its estimate (held), and a finished job."""
    reset(simulator, "fast")
    providers = {"fastp": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), providers)
    env |= {
        "BATCHGW_PROVIDERS__FASTP__CATALOG_PROVIDER": "openai",
        "BATCHGW_ROUTING__CANARY_MIN_REQUESTS": "30",
        "BATCHGW_ROUTING__CANARY_REQUESTS": "5",
    }
    gateway: GatewayProcess = gateway_factory(env).start()
    admin = AdminClient(gateway.base_url, ADMIN_KEY)
    client = gateway.client(gateway.create_key("acme"))
    admin.put_budget({"scope": "team:acme", "period": "day", "limit_usd": 5.0, "hard": True, "thresholds": []})
    done = wait_for(client, create_batch(client, chat_requests(6, prefix="done"), {}))
    set_faults(simulator, "fast", runaway_output_tokens=2560)
    held_id = create_batch(client, unbounded_requests(40), {})
    deadline = time.monotonic() + 60
    while admin.batch(held_id).get("hold") is None:
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.2)
    yield Held(gateway, admin, held_id, done.id)
    reset(simulator, "fast")


def test_a_held_job_shows_why_and_is_released_from_its_page(held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, held.gateway.base_url), "views/job.py", batch=held.held_id)
    warning = next(w.value for w in at.warning if "Held after its canary" in w.value)
    assert "x the estimate" in warning and "Projected $" in warning
    advisor = run_page(app_test(monkeypatch, held.gateway.base_url), "views/advisor.py")
    assert held.held_id in texts(advisor)  # listed among the batches waiting for an operator
    at.button(key="canary_release").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert held.admin.batch(held.held_id)["hold"] is None
    deadline = time.monotonic() + 60
    while held.admin.batch(held.held_id)["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_advisor_estimates_a_jobs_input_with_a_recommendation(
    held: Held, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = run_page(app_test(monkeypatch, held.gateway.base_url), "views/advisor.py")
    file_id = held.admin.batch(held.done_id)["input_file_id"]
    at.text_input(key="advisor_file").set_value(file_id).run()
    at.text_input(key="advisor_deadline").set_value("1h").run()
    at.button(key="advisor_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    offers = frame_with(at, "turnaround p50 / p90")
    assert list(offers["provider"]) == ["fastp"]
    assert re.fullmatch(r"from [\d,]+ past requests|no history: built-in default \(256 output tokens\)",
                        offers["estimate basis"].iloc[0])  # fmt: skip
    advice = "\n".join(str(e.value) for kind in ("success", "warning") for e in getattr(at, kind))
    [expected] = held.admin.estimate(file_id, deadline="1h")["advice"]
    assert f"gpt-4o-mini: **{expected['recommendation'].upper()}**" in advice and expected["reason"] in advice


def test_budgets_show_reserved_and_left(held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, held.gateway.base_url), "views/spend.py")
    budgets = frame_with(at, "left")
    [budget] = held.admin.budgets()
    assert budgets["left"].iloc[0] == f"${budget['remaining_usd']:,.4f}"
