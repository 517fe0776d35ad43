"""Hard budgets hold with real processes: five concurrent jobs, one writing 10x the output it was estimated at and
one failing over to a provider 6.7x the price, never take a hard budget past it by more than the documented bound
(the in-flight work at the check that finds it exceeded); what providers billed is what the ledger records."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.billing.history import MIN_HISTORY
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, loopback, simulated_provider_env
from tests.engine import (
    ROUTING_ENV,
    batch_creates,
    chat_requests,
    collect,
    control,
    emulator_log,
    query,
    reset,
    set_faults,
    unbounded_requests,
    wait_for,
)

ADMIN = {"Authorization": "Bearer test-admin-key"}
CHEAP = {"batch": (0.15, 0.60), "sync": (0.30, 1.20)}
PRICEY = {"batch": (1.00, 4.00), "sync": (2.00, 8.00)}  # 6.7x the cheap batch price
RUNAWAY_TOKENS = 2560  # 10x the 256 output tokens a request without max_tokens is estimated at
PER_BATCH = 4
IN_FLIGHT = {"cheap": 1, "cheap2": 2, "pricey": 2}
EMULATOR = {"cheap": "fast", "cheap2": "steady", "pricey": "other"}
MODELS = {"cheap": ["gpt-4o-mini"], "cheap2": ["llama-3.3-70b"], "pricey": ["gpt-4o-mini", "llama-3.3-70b"]}
PRICES = {"cheap": CHEAP, "cheap2": CHEAP, "pricey": PRICEY}
MAX_INPUT_TOKENS = 200  # far above any request here (a few dozen tokens)


def write_catalog(folder: Path) -> Path:
    lines = ["schema_version = 1", ""]
    for model in ("gpt-4o-mini", "llama-3.3-70b"):
        lines += [f'[models."{model}"]', ""]
        for provider, served in MODELS.items():
            if model not in served:
                continue
            prices = PRICES[provider]
            lines += [
                f'[[models."{model}".offers]]',
                f'provider = "{provider}"',
                f'provider_model = "{model}"',
                'modes = ["batch", "sync"]',
                f"input_per_mtok = {prices['sync'][0]}",
                f"output_per_mtok = {prices['sync'][1]}",
                f"batch_input_per_mtok = {prices['batch'][0]}",
                f"batch_output_per_mtok = {prices['batch'][1]}",
                'source = "test prices"',
                "as_of = 2026-12-01",
                "",
            ]
    path = folder / "catalog.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def gateway(gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path) -> GatewayProcess:
    reset(simulator, *EMULATOR.values())
    providers = {
        name: {
            "emulator": EMULATOR[name],
            "models": {model: model for model in MODELS[name]},
            "limits": {"max_requests_per_batch": PER_BATCH, "max_batches_in_flight": IN_FLIGHT[name]},
        }
        for name in EMULATOR
    }
    env = simulated_provider_env(simulator, tmp_path, providers) | ROUTING_ENV
    env["BATCHGW_CATALOG__FILE"] = str(write_catalog(tmp_path))
    env["BATCHGW_ROUTING__MAX_REQUEST_ATTEMPTS"] = "5"
    started: GatewayProcess = gateway_factory(env).start()
    return started


def upload(client: openai.OpenAI, requests: list[dict[str, Any]]) -> str:
    content = "".join(json.dumps(r) + "\n" for r in requests).encode()
    return client.files.create(file=("input.jsonl", content), purpose="batch").id


def estimate(gateway: GatewayProcess, file_id: str) -> float:
    response = loopback.post(f"{gateway.base_url}/admin/estimate", json={"file_id": file_id}, headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    return float(response.json()["chosen_cost_usd"])


def set_budget(gateway: GatewayProcess, limit: float) -> None:
    body = {"scope": "team:acme", "period": "day", "limit_usd": limit, "hard": True, "thresholds": []}
    response = loopback.put(f"{gateway.base_url}/admin/budgets", json=body, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text


def documented_bound() -> float:
    """The most a hard budget can be overshot here (README, gateway.billing.guard): every provider batch that may
    be in flight when a check finds the budget exceeded, each request at its input plus its largest output: the
    rambling provider's for the requests without max_tokens (which only it serves: asserted), else max_tokens."""
    worst_output = {"cheap": RUNAWAY_TOKENS, "cheap2": 64, "pricey": 64}
    total = 0.0
    for provider, in_flight in IN_FLIGHT.items():
        rate_in, rate_out = PRICES[provider]["batch"]
        per_request = (MAX_INPUT_TOKENS * rate_in + worst_output[provider] * rate_out) / 1_000_000
        total += in_flight * PER_BATCH * per_request
    return total


def billed(simulator: SimulatorCluster) -> float:
    """What the emulated providers bill: the tokens of every request they answered, at each one's batch rate."""
    total = 0.0
    for provider, emulator in EMULATOR.items():
        invoice = control(simulator, "GET", f"/providers/{emulator}/invoice")
        rate_in, rate_out = PRICES[provider]["batch"]
        total += (invoice["input_tokens"] * rate_in + invoice["output_tokens"] * rate_out) / 1_000_000
    return total


def test_five_concurrent_jobs_never_take_a_hard_budget_past_the_bound(
    gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", runaway_output_tokens=RUNAWAY_TOKENS)
    set_faults(simulator, "steady", expire=True, expire_after_fraction=0.5)
    jobs = {
        **{f"steady-{i}": chat_requests(12, prefix=f"s{i}") for i in range(3)},
        "runaway": unbounded_requests(40),
        "failover": chat_requests(20, model="llama-3.3-70b", prefix="f"),
    }
    files = {name: upload(client, requests) for name, requests in jobs.items()}
    estimates = {name: estimate(gateway, file_id) for name, file_id in files.items()}
    limit = 1.25 * sum(estimates.values())
    set_budget(gateway, limit)
    batches = {
        name: client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
        for name, file_id in files.items()
    }
    finished = {name: wait_for(client, batch_id, timeout=120) for name, batch_id in batches.items()}
    outcomes = {name: collect(client, batch) for name, batch in finished.items()}

    [(spent,)] = query(gateway, "SELECT SUM(cost_usd) FROM ledger")
    bound = documented_bound()
    print(f"hard budget ${limit:.6f}: spent ${spent:.6f}, overshoot ${max(0.0, spent - limit):.6f}, bound ${bound:.6f}")
    assert spent <= limit + bound
    assert billed(simulator) == pytest.approx(spent, rel=1e-9)  # every token a provider billed is in the ledger

    for name, requests in jobs.items():  # every request once, in the output or the error file
        outcome = outcomes[name]
        assert set(outcome.output) | set(outcome.errors) == {r["custom_id"] for r in requests}, name

    runaway = finished["runaway"]
    assert runaway.status == "cancelled", runaway
    assert runaway.errors is not None
    [stop] = [e for e in runaway.errors.data if e.code == "budget_exceeded"]
    assert "more than the daily budget of team 'acme'" in (stop.message or "")
    ratio = re.search(r"the rest projected at (\d+\.\d)x its estimate", stop.message or "")
    assert ratio is not None and float(ratio[1]) > 8, stop.message
    answered = outcomes["runaway"].output
    assert len(answered) == PER_BATCH  # the one provider batch in flight when the overrun was found
    assert {line["provider"] for line in answered.values()} == {"cheap"}
    assert {line["error"]["code"] for line in outcomes["runaway"].errors.values()} == {"budget_exceeded"}
    assert len(batch_creates(emulator_log(simulator, "fast"))) >= 1

    for name in ("steady-0", "steady-1", "steady-2"):
        assert finished[name].status == "completed" and not outcomes[name].errors, name

    failover = outcomes["failover"]
    detail = loopback.get(f"{gateway.base_url}/admin/batches/{batches['failover']}", headers=ADMIN, timeout=30).json()
    moves = [d for d in detail["decisions"] if d["kind"] == "failover"]
    assert moves, "the expired provider batches moved nothing"
    placed = [d for d in moves if d["chosen_provider"] == "pricey"]
    refused = [d for d in moves if d["chosen_provider"] is None]
    assert len(placed) + len(refused) == len(moves)
    for decision in refused:
        assert "no placement fits the hard budget" in decision["reason"]
    over = {cid for cid, line in failover.errors.items() if line["error"]["code"] == "budget_exceeded"}
    assert len(over) == sum(d["request_count"] for d in refused)
    assert {line["provider"] for line in failover.output.values()} <= {"cheap2", "pricey"}


def test_a_failover_that_does_not_fit_at_the_new_price_is_not_placed(
    gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(8, model="llama-3.3-70b", prefix="f")
    past = chat_requests(MIN_HISTORY, model="llama-3.3-70b", prefix="past")
    warmup = wait_for(client, client.batches.create(
        input_file_id=upload(client, past), endpoint="/v1/chat/completions", completion_window="24h"
    ).id, timeout=120)  # fmt: skip
    assert warmup.status == "completed"  # the team's history now prices these requests at what they cost
    [(spent,)] = query(gateway, "SELECT SUM(cost_usd) FROM ledger")
    set_faults(simulator, "steady", expire=True, expire_after_fraction=0.5)
    file_id = upload(client, requests)
    # The cheap provider fits; half of the job at 6.7x the price does not.
    set_budget(gateway, spent + 1.1 * estimate(gateway, file_id))
    batch = wait_for(client, client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id, timeout=120)  # fmt: skip
    outcome = collect(client, batch)
    assert len(outcome.output) == 4 and {line["provider"] for line in outcome.output.values()} == {"cheap2"}
    assert {line["error"]["code"] for line in outcome.errors.values()} == {"budget_exceeded"}
    assert all("re-checked" not in line["error"]["message"] for line in outcome.errors.values())
    message = next(iter(outcome.errors.values()))["error"]["message"]
    assert "pricey at $" in message and "no placement fits the hard budget" in message
    assert batch.errors is not None and any(e.code == "budget_exceeded" for e in batch.errors.data)
    assert batch_creates(emulator_log(simulator, "other")) == []  # nothing ever reached the pricier provider


def test_a_spent_budget_stops_a_fan_out_run_within_a_second_and_raising_it_resumes(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "steady")
    rate = 300  # requests a minute: 5 a second
    providers = {
        "syncp": {
            "emulator": "steady",
            "kind": "openai_sync",
            "models": {"gpt-4o-mini": "gpt-4o-mini"},
            "limits": {"requests_per_minute": rate, "max_concurrency": 2},
        }
    }
    env = simulated_provider_env(simulator, tmp_path, providers) | {
        "BATCHGW_CATALOG__FILE": str(write_catalog(tmp_path))
    }
    env["BATCHGW_PROVIDERS__SYNCP__CATALOG_PROVIDER"] = "cheap"
    gateway: GatewayProcess = gateway_factory(env).start()
    client = gateway.client(gateway.create_key("acme"))
    set_budget(gateway, 100.0)
    requests = chat_requests(60)
    batch_id = client.batches.create(
        input_file_id=upload(client, requests), endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    started = wait_for(client, batch_id, lambda b: b.request_counts is not None and b.request_counts.completed >= 10)
    assert started.request_counts is not None
    answered_before = started.request_counts.completed
    set_budget(gateway, 0.000001)  # spent already: the run must stop at its next check (every second)
    wait_for(client, batch_id, lambda b: "held by budget" in (b.metadata or {}).get("gateway_waiting", ""), 60)
    shards = loopback.get(f"{gateway.base_url}/admin/batches/{batch_id}", headers=ADMIN, timeout=30).json()["shards"]
    [paused] = [s for s in shards if s["state"] == "done"]
    assert paused["end_reason"] == "budget"
    # One second of requests at the rate limit, the two in flight, and a second of slack for a busy machine.
    assert answered_before <= paused["completed"] <= answered_before + 2 * rate // 60 + 2
    time.sleep(3)  # longer than the budget re-check: nothing more is sent while it is spent
    held = client.batches.retrieve(batch_id)
    assert held.request_counts is not None and held.request_counts.completed == paused["completed"] < 60
    set_budget(gateway, 100.0)
    outcome = collect(client, wait_for(client, batch_id, timeout=120))
    assert outcome.batch.status == "completed" and set(outcome.output) == {r["custom_id"] for r in requests}
