"""A batch's own ``max_cost_usd`` stops its remaining shards once actual spend reaches it."""

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


def test_spend_reaching_max_cost_stops_the_remaining_shards(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "fast", "other")
    gateway = start_gateway(
        gateway_factory,
        simulator,
        tmp_path,
        cheap="fast",
        pricey="other",
        limits={"max_requests_per_batch": 10, "max_batches_in_flight": 1},
    )
    client = gateway.client(gateway.create_key("acme"))
    # Estimated at about $0.0035 for 40 requests; a rambling model makes each shard of 10 cost about $0.006.
    set_faults(simulator, "fast", runaway_output_tokens=2000)
    batch = wait_for(client, create_batch(client, unbounded_requests(40), {"max_cost_usd": "0.01"}), timeout=90)
    assert batch.status == "cancelled", batch
    assert batch.errors is not None
    [error] = [e for e in batch.errors.data if e.code == "max_cost_reached"]
    assert "max_cost_usd of $0.0100" in (error.message or "")
    spent = float((batch.metadata or {})["gateway_cost_usd"])
    assert 0.01 <= spent < 0.02, spent
    created = batch_creates(emulator_log(simulator, "fast"))
    assert len(created) < 4, "every shard ran although the cap was reached"
    outcome = collect(client, batch)
    assert len(outcome.output) + len(outcome.errors) == 40
    assert {line["error"]["code"] for line in outcome.errors.values()} == {"batch_cancelled"}
    assert admin(gateway, f"/batches/{batch.id}")["cost_usd"] == round(spent, 6)
