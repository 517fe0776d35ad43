"""Canary runs: the first N requests run alone; their real cost and error rate decide the rest. A projection far
above the estimate holds the batch for an operator, who releases or cancels it through the admin API or
``batchgw canary``; large jobs get a canary without asking."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import loopback
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

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases


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


ADMIN = {"Authorization": "Bearer test-admin-key"}
# Large jobs get a canary by default: here, jobs of 30 requests or more get one of 5.
DEFAULT_CANARY = {"BATCHGW_ROUTING__CANARY_MIN_REQUESTS": "30", "BATCHGW_ROUTING__CANARY_REQUESTS": "5"}


def held_batch(gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path) -> tuple[Any, Any, str]:
    """A gateway, a client and a 40-request job (no canary hint, no cost cap) whose default canary of 5 projects
    about 10x its estimate: held for an operator."""
    reset(simulator, "fast", "other")
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other", env=DEFAULT_CANARY)
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", runaway_output_tokens=2560)  # 10x the 256 tokens each request is estimated at
    batch_id = create_batch(client, unbounded_requests(40), {})
    deadline = time.monotonic() + 60
    while admin(gateway, f"/batches/{batch_id}")["hold"] is None:
        assert time.monotonic() < deadline, "the canary never held the batch"
        time.sleep(0.2)
    assert client.batches.retrieve(batch_id).status == "in_progress"
    return gateway, client, batch_id


def test_a_canary_projecting_far_above_its_estimate_holds_the_batch_until_released(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway, client, batch_id = held_batch(gateway_factory, simulator, tmp_path)
    detail = admin(gateway, f"/batches/{batch_id}")
    assert detail["hold"]["reason"] == "canary"
    assert "the projection is 9." in detail["hold"]["detail"] or "the projection is 10." in detail["hold"]["detail"]
    assert "x the estimate" in detail["hold"]["detail"] and "above anomaly_factor 3" in detail["hold"]["detail"]
    assert detail["waiting"]["code"] == "canary_hold"
    [alert] = [a for a in admin(gateway, "/alerts")["data"] if a["kind"] == "canary"]
    assert alert["batch_id"] == batch_id and "held for an operator" in alert["message"]
    assert "projected $" in alert["message"]
    assert len(batch_creates(emulator_log(simulator, "fast"))) == 1  # only the canary reached the provider
    listed = gateway.cli("canary", "ls", "--base-url", f"{gateway.base_url}/v1").stdout
    assert batch_id in listed and "projected $" in listed

    refused = loopback.post(f"{gateway.base_url}/admin/batches/batch_unknown/canary/release", headers=ADMIN, timeout=30)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    released = loopback.post(f"{gateway.base_url}/admin/batches/{batch_id}/canary/release", headers=ADMIN, timeout=30)
    assert released.status_code == 200, released.text
    assert released.json()["hold_reason"] is None
    again = loopback.post(f"{gateway.base_url}/admin/batches/{batch_id}/canary/release", headers=ADMIN, timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "batch_not_held"
    batch = wait_for(client, batch_id, timeout=90)
    assert batch.status == "completed", batch
    assert len(collect(client, batch).output) == 40
    assert "no batch is held" in gateway.cli("canary", "ls", "--base-url", gateway.base_url).stdout


def test_a_held_canary_cancelled_keeps_its_answers_and_runs_nothing_more(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway, client, batch_id = held_batch(gateway_factory, simulator, tmp_path)
    cancelled = gateway.cli("canary", "cancel", batch_id, "--base-url", gateway.base_url)
    assert batch_id in cancelled.stdout, cancelled
    batch = wait_for(client, batch_id, timeout=60)
    assert batch.status == "cancelled", batch
    assert batch.errors is not None
    [error] = [e for e in batch.errors.data if e.code == "canary_cancelled"]
    assert "Cancelled by an operator after its canary" in (error.message or "")
    outcome = collect(client, batch)
    assert len(outcome.output) == 5 and len(outcome.errors) == 35  # the canary's answers are delivered
    assert {line["error"]["code"] for line in outcome.errors.values()} == {"batch_cancelled"}
    assert len(batch_creates(emulator_log(simulator, "fast"))) == 1
    spent = float((batch.metadata or {})["gateway_cost_usd"])
    assert spent == pytest.approx(admin(gateway, f"/batches/{batch_id}")["cost_usd"], abs=1e-6)
    response = loopback.post(f"{gateway.base_url}/admin/batches/{batch_id}/canary/cancel", headers=ADMIN, timeout=30)
    assert response.status_code == 409


def test_with_canary_action_alert_the_batch_goes_on_after_the_alert(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "fast", "other")
    env = DEFAULT_CANARY | {"BATCHGW_BILLING__CANARY_ACTION": "alert"}
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other", env=env)
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", runaway_output_tokens=2560)
    batch = wait_for(client, create_batch(client, unbounded_requests(40), {}), timeout=90)
    assert batch.status == "completed"
    [alert] = [a for a in admin(gateway, "/alerts")["data"] if a["kind"] == "canary"]
    assert "The batch is going on" in alert["message"]
    verdict = [d for d in admin(gateway, f"/batches/{batch.id}")["decisions"] if d["kind"] == "canary"]
    assert "alert raised, the rest goes on" in verdict[0]["reason"]
