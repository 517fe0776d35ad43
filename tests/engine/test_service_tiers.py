"""Service tiers as offers, through ``batchgw serve``: a synchronous provider priced at its standard, flex and
priority tiers next to a provider batch.

A one-hour deadline runs at the flex tier (the batch tier's 24h does not fit), and flex refusals for short
capacity cost nothing; a three-day deadline takes the cheaper batch tier; a ``tier=priority`` batch asks for
priority, and the answers the provider downgraded to the standard tier are billed at the standard rate; a
provider batch still running close to the deadline is cancelled and its unfinished requests move to a tier
fast enough. Every cost is checked against what the emulator bills at each tier.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import Batch

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import admin, answer_tokens, collect, control, ledger_cost, priced, reset, run_tiered, set_faults

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

MODEL = "tiered-model"
STANDARD, FLEX, PRIORITY, BATCH = (1.0, 4.0), (0.5, 2.0), (2.0, 8.0), (0.4, 1.6)
PROVIDERS: dict[str, dict[str, Any]] = {
    "tiered": {
        "emulator": "other",
        "kind": "openai_sync",
        "models": {MODEL: "gpt-4o-mini"},
        "limits": {"requests_per_minute": 1200, "max_concurrency": 4},
    },
    "batchy": {"emulator": "fast", "models": {MODEL: "gpt-4o-mini"}},
}
CATALOG = f"""schema_version = 1
[models."{MODEL}"]
[[models."{MODEL}".offers]]
provider = "tiered"
provider_model = "gpt-4o-mini"
modes = ["sync"]
input_per_mtok = {STANDARD[0]}
output_per_mtok = {STANDARD[1]}
flex_input_per_mtok = {FLEX[0]}
flex_output_per_mtok = {FLEX[1]}
priority_input_per_mtok = {PRIORITY[0]}
priority_output_per_mtok = {PRIORITY[1]}
source = "test prices"
as_of = 2026-12-01
[[models."{MODEL}".offers]]
provider = "batchy"
provider_model = "gpt-4o-mini"
modes = ["batch"]
input_per_mtok = {STANDARD[0]}
output_per_mtok = {STANDARD[1]}
batch_input_per_mtok = {BATCH[0]}
batch_output_per_mtok = {BATCH[1]}
source = "test prices"
as_of = 2026-12-01
"""
REQUESTS = 20
ESCALATE_BEFORE_S = 8
"""Seconds before a deadline at which a provider batch still running moves (a deadline of 18 s: 10 s after it was
created, rather than halfway to the deadline, which comes earlier)."""


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    folder = tmp_path_factory.mktemp("providers")
    (folder / "catalog.toml").write_text(CATALOG, encoding="utf-8")
    env = simulated_provider_env(simulator, folder, PROVIDERS) | {
        "BATCHGW_CATALOG__FILE": str(folder / "catalog.toml"),
        "BATCHGW_ROUTING__ESCALATE_BEFORE_DEADLINE_S": str(ESCALATE_BEFORE_S),
    }
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def clean_emulators(simulator: SimulatorCluster) -> Iterator[None]:
    reset(simulator, "other", "fast")
    yield
    reset(simulator, "other", "fast")


def run(client: openai.OpenAI, prefix: str, window: str = "24h", policy: str = "deadline", **metadata: str) -> Batch:
    return run_tiered(client, MODEL, prefix, REQUESTS, window, policy, **metadata)


def invoice(simulator: SimulatorCluster) -> dict[str, dict[str, int]]:
    billed: dict[str, dict[str, int]] = control(simulator, "GET", "/providers/other/invoice")["sync_by_tier"]
    return billed


def test_a_one_hour_deadline_runs_at_the_flex_tier_and_refused_flex_calls_cost_nothing(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "other", flex_unavailable_next=3)
    batch = run(client, "flex", deadline="1h")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    assert {line["response"]["body"]["service_tier"] for line in outcome.output.values()} == {"flex"}
    decision = admin(gateway, f"/batches/{batch.id}")["decisions"][0]
    assert decision["chosen_provider"] == "tiered"
    assert decision["reason"].startswith("tiered: flex tier:") and "fits deadline" in decision["reason"]
    assert {c["tier"] for c in decision["candidates"]} == {"batch", "standard", "flex", "priority"}
    stats = control(simulator, "GET", "/providers/other/stats")
    assert stats["flex_refused"] == 3
    used = answer_tokens(list(outcome.output.values()))
    assert invoice(simulator) == {"flex": {"input": used[0], "output": used[1]}}
    cost, modes = ledger_cost(gateway, batch.id)
    assert modes == {"flex"} and cost == pytest.approx(priced(used, FLEX), rel=1e-9)


def test_a_three_day_deadline_takes_the_cheaper_batch_tier(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    batch = run(client, "days", window="72h", deadline="72h")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS
    decision = admin(gateway, f"/batches/{batch.id}")["decisions"][0]
    assert decision["chosen_provider"] == "batchy" and decision["reason"].startswith("batchy: batch tier:")
    assert invoice(simulator) == {}
    cost, modes = ledger_cost(gateway, batch.id)
    assert modes == {"batch"} and cost == pytest.approx(priced(answer_tokens(list(outcome.output.values())), BATCH))


def test_priority_answers_downgraded_to_standard_are_billed_at_the_standard_rate(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "other", priority_downgrade_rate=0.5)
    batch = run(client, "prio", tier="priority")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS
    served: dict[str, list[dict[str, Any]]] = {}
    for line in outcome.output.values():
        served.setdefault(line["response"]["body"]["service_tier"], []).append(line)
    assert set(served) == {"priority", "default"}, "the emulator downgraded none or all: nothing is compared"
    billed = invoice(simulator)
    assert billed == {
        tier: dict(zip(("input", "output"), answer_tokens(lines), strict=True)) for tier, lines in served.items()
    }
    cost, modes = ledger_cost(gateway, batch.id)
    expected = priced(answer_tokens(served["priority"]), PRIORITY) + priced(answer_tokens(served["default"]), STANDARD)
    assert modes == {"priority"} and cost == pytest.approx(expected, rel=1e-9)
    metadata = batch.metadata or {}
    assert float(metadata["gateway_cost_usd"]) == pytest.approx(expected, abs=1e-6)


def test_a_provider_batch_still_running_near_the_deadline_moves_to_a_faster_tier(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", stall=True)  # the cheap provider batch makes no progress
    batch = run(client, "late", policy="cheapest", deadline=f"{ESCALATE_BEFORE_S + 10}s")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"tiered"}
    route, failover = admin(gateway, f"/batches/{batch.id}")["decisions"]
    assert (route["kind"], route["chosen_provider"]) == ("route", "batchy")
    assert (failover["kind"], failover["policy"], failover["chosen_provider"]) == ("failover", "deadline", "tiered")
    assert "batchy was too slow for the deadline (batch cancelled)" in failover["cause"]
    assert failover["reason"].startswith("tiered: sync fan-out tier:")  # flex's 15 minutes do not fit what is left
    jobs = control(simulator, "GET", "/providers/fast/stats")["batches"]
    assert jobs == {"cancelled": 1}
    cost, modes = ledger_cost(gateway, batch.id)
    used = answer_tokens(outcome.output.values())
    assert modes == {"batch", "sync"} and cost == pytest.approx(priced(used, STANDARD))
