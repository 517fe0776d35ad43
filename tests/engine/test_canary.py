"""Canary runs: the first N requests run alone; their real cost and error rate decide the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.simulator import SimulatorCluster
from tests.engine import (
    admin,
    batch_creates,
    collect,
    create_batch,
    emulator_log,
    reset,
    set_faults,
    start_gateway,
    unbounded_requests,
    wait_for,
)


def test_canary_stops_a_job_whose_projection_is_over_its_cap_and_lets_a_cheap_one_run(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "fast", "other")
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other")
    client = gateway.client(gateway.create_key("acme"))
    requests = unbounded_requests(40)
    # Estimated at about $0.0035 (40 x 256 output tokens at $0.30/MTok): under a cap of $0.01.
    cap = {"canary": "5", "max_cost_usd": "0.01"}

    cheap = wait_for(client, create_batch(client, requests, cap))
    assert cheap.status == "completed", cheap
    assert len(collect(client, cheap).output) == 40
    verdict = [d for d in admin(gateway, f"/batches/{cheap.id}")["decisions"] if d["kind"] == "canary"]
    assert len(verdict) == 1 and "goes on" in verdict[0]["reason"]
    assert len(batch_creates(emulator_log(simulator, "fast"))) == 2  # the canary, then the rest

    reset(simulator, "fast")
    set_faults(simulator, "fast", runaway_output_tokens=2000)
    runaway = wait_for(client, create_batch(client, requests, cap))
    assert runaway.status == "failed", runaway
    assert runaway.errors is not None
    [error] = [e for e in runaway.errors.data if e.code == "canary_failed"]
    assert "projected $" in (error.message or "") and "above max_cost_usd $0.0100" in (error.message or "")
    outcome = collect(client, runaway)
    assert len(outcome.output) == 5  # the canary's answers are kept
    assert len(outcome.errors) == 35
    assert {line["error"]["code"] for line in outcome.errors.values()} == {"canary_failed"}
    assert len(batch_creates(emulator_log(simulator, "fast"))) == 1, "the held requests reached the provider"
    spent = float((runaway.metadata or {})["gateway_cost_usd"])
    assert 0 < spent < 0.01


def test_canary_with_too_many_errors_stops_the_batch(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "fast", "other")
    gateway = start_gateway(
        gateway_factory,
        simulator,
        tmp_path,
        cheap="fast",
        pricey="other",
        env={"BATCHGW_ROUTING__MAX_REQUEST_ATTEMPTS": "1"},
    )
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", fail_fraction=1.0)
    batch = wait_for(client, create_batch(client, unbounded_requests(30), {"canary": "4"}))
    assert batch.status == "failed"
    assert batch.errors is not None
    message = next(e.message for e in batch.errors.data if e.code == "canary_failed") or ""
    assert "4 of 4 failed (100%)" in message and "error rate is above 20%" in message
    assert batch.request_counts is not None and batch.request_counts.failed == 30
