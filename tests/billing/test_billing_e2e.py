"""Budgets and alerts through the real engine: batches on an emulated provider spend real money.

A hard budget crossing a threshold posts one alert to a webhook that fails first; a batch whose
estimate does not fit is refused with the figures; a spent budget answers 429 until it is raised, and
cancels running provider batches while their unfinished requests wait for it; and the spend API agrees
with the batches' own cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.billing.conftest import Receiver
from tests.conftest import GatewayProcess, loopback, simulated_provider_env
from tests.engine import cancel_calls, chat_requests, emulator_log, query, reset, submit, wait_for

PRICES = {"sync": (2.50, 10.00), "batch": (1.25, 5.00)}


def write_catalog(folder: Path) -> Path:
    path = folder / "catalog.toml"
    sync, batch = PRICES["sync"], PRICES["batch"]
    path.write_text(
        "\n".join(
            [
                "schema_version = 1",
                '[models."gpt-4o-mini"]',
                '[[models."gpt-4o-mini".offers]]',
                'provider = "fast"',
                'provider_model = "gpt-4o-mini"',
                'modes = ["batch", "sync"]',
                f"input_per_mtok = {sync[0]}",
                f"output_per_mtok = {sync[1]}",
                f"batch_input_per_mtok = {batch[0]}",
                f"batch_output_per_mtok = {batch[1]}",
                'source = "test prices"',
                "as_of = 2026-12-01",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def start(
    factory: Any, cluster: SimulatorCluster, folder: Path, receiver: Receiver, emulator: str = "fast", **limits: int
) -> GatewayProcess:
    """A gateway whose provider ``fast`` runs on the named emulator, posting alerts to the receiver."""
    reset(cluster, emulator)
    providers = {"fast": {"emulator": emulator, "models": {"gpt-4o-mini": "gpt-4o-mini"}, "limits": limits}}
    env = simulated_provider_env(cluster, folder, providers) | {
        "BATCHGW_CATALOG__FILE": str(write_catalog(folder)),
        "BATCHGW_BILLING__WEBHOOK_URL": receiver.url,
        "BATCHGW_BILLING__WEBHOOK_BACKOFF_S": "0.1",
        "BATCHGW_BILLING__WEBHOOK_POLL_INTERVAL_S": "0.2",
    }
    gateway: GatewayProcess = factory(env).start()
    return gateway


@pytest.fixture
def gateway(gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path, receiver: Receiver) -> GatewayProcess:
    return start(gateway_factory, simulator, tmp_path, receiver)


def admin(gateway: GatewayProcess, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": "Bearer test-admin-key"}
    response = loopback.request(method, f"{gateway.base_url}/admin{path}", headers=headers, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def costs(gateway: GatewayProcess, batch_id: str) -> tuple[float, float]:
    """The batch's actual and estimated cost, exactly as stored."""
    row = query(gateway, "SELECT cost_usd, estimated_cost_usd FROM batches WHERE id = :id", id=batch_id)[0]
    return float(row[0]), float(row[1])


def test_budget_alerts_reservations_and_refusals_end_to_end(gateway: GatewayProcess, receiver: Receiver) -> None:
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(20)
    first = wait_for(client, submit(client, requests).id)
    assert first.status == "completed"
    spent_once, estimate = costs(gateway, first.id)
    assert 0 < spent_once <= estimate

    # Estimates learn from the first run: the same batch again is estimated at what it cost, so a second one
    # fits and a third one does not.
    limit = 2.5 * spent_once
    low, high = 1.5 * spent_once / limit, 2.5 * spent_once / limit
    admin(
        gateway,
        "PUT",
        "/budgets",
        json={
            "scope": "team:acme",
            "period": "day",
            "limit_usd": limit,
            "hard": True,
            "thresholds": [low, high],
        },
    )
    second = wait_for(client, submit(client, requests).id)
    assert second.status == "completed"
    assert costs(gateway, second.id)[0] == pytest.approx(spent_once, rel=1e-9)
    assert costs(gateway, second.id)[1] == pytest.approx(spent_once, rel=0.05)  # learned from the first run

    deadline = time.monotonic() + 20
    while not receiver.accepted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [status for status, _ in receiver.posts] == [500, 500, 200]
    alert = receiver.accepted[0]["alert"]
    assert alert["kind"] == "budget_threshold" and alert["threshold"] == pytest.approx(low)
    assert alert["spent_usd"] == pytest.approx(2 * spent_once, rel=1e-9)
    assert receiver.accepted[0]["text"].startswith(f"{low:.0%} of the daily budget of team 'acme' reached")
    # The worker records the delivery once the receiver's 200 has reached it: a moment after the receiver saw it.
    def deliveries() -> list[tuple[Any, Any, Any]]:
        alerts = admin(gateway, "GET", "/alerts")["data"]
        return [(a["id"], a["webhook"]["state"], a["webhook"]["attempts"]) for a in alerts]

    wait_until(lambda: deliveries() != [(alert["id"], "pending", 3)], timeout=10)
    assert deliveries() == [(alert["id"], "delivered", 3)]

    third = wait_for(client, submit(client, requests).id)
    assert third.status == "failed" and third.errors and third.errors.data
    error = third.errors.data[0]
    assert error.code == "budget_exceeded"
    assert "does not fit the daily budget of team 'acme'" in (error.message or "")

    admin(
        gateway,
        "PUT",
        "/budgets",
        json={"scope": "team:acme", "period": "day", "limit_usd": 2 * spent_once, "hard": True, "thresholds": []},
    )
    with pytest.raises(openai.RateLimitError, match="daily budget of team 'acme'"):
        submit(client, requests[:1])
    admin(gateway, "PUT", "/budgets", json={"scope": "team:acme", "period": "day", "limit_usd": 100, "hard": True})
    assert submit(client, requests[:1]).status == "validating"

    spend = admin(gateway, "GET", "/spend", params={"group_by": "team", "bucket": "day", "since": time.time() - 86400})
    assert spend["totals"]["cost_usd"] == pytest.approx(2 * spent_once, rel=1e-9)
    assert [row["key"] for row in spend["data"]] == ["acme"]
    budget = admin(gateway, "GET", "/budgets")["data"][0]
    assert budget["spent_usd"] == pytest.approx(2 * spent_once, rel=1e-9)
    metrics = loopback.get(f"{gateway.base_url}/metrics", timeout=30).text
    assert 'batchgw_alerts_fired_total{kind="budget_threshold"} 1.0' in metrics
    assert "secret-token" not in gateway.log() + metrics  # the webhook URL is a secret


def shard_states(gateway: GatewayProcess, batch_id: str) -> list[tuple[str, str | None]]:
    return [(s["state"], s["last_error"]) for s in admin(gateway, "GET", f"/batches/{batch_id}")["shards"]]


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_spent_hard_budget_pauses_queued_shards_until_raised(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path, receiver: Receiver
) -> None:
    gateway = start(
        gateway_factory,
        simulator,
        tmp_path,
        receiver,
        emulator="slow",
        max_batches_in_flight=1,
        max_requests_per_batch=10,
    )
    client = gateway.client(gateway.create_key("acme"))
    warmup = wait_for(client, submit(client, chat_requests(2, prefix="warm")).id)
    assert warmup.status == "completed"
    spent = costs(gateway, warmup.id)[0]
    budget = {"scope": "team:acme", "period": "day", "hard": True, "thresholds": []}
    admin(gateway, "PUT", "/budgets", json=budget | {"limit_usd": 100})
    batch = submit(client, chat_requests(20))
    wait_until(lambda: [state for state, _ in shard_states(gateway, batch.id)].count("running") == 1)
    admin(gateway, "PUT", "/budgets", json=budget | {"limit_usd": spent})  # already spent: pause the rest

    def paused() -> bool:
        states = shard_states(gateway, batch.id)
        return any(state == "done" for state, _ in states) and any(
            state == "queued" and (error or "").startswith("paused: ") for state, error in states
        )

    wait_until(paused)
    time.sleep(6)  # longer than the submit stage's budget re-check: still waiting
    # The running provider batch was cancelled (its unfinished requests wait as a new queued shard) and the
    # other shard never started.
    assert sorted(state for state, _ in shard_states(gateway, batch.id)) == ["done", "queued", "queued"]
    shards = admin(gateway, "GET", f"/batches/{batch.id}")["shards"]
    [cancelled] = [s for s in shards if s["state"] == "done"]
    assert cancelled["end_reason"] == "budget" and cancelled["provider_batch_id"] in cancel_calls(
        emulator_log(simulator, "slow")
    )
    assert "daily budget of team 'acme'" in next(e or "" for s, e in shard_states(gateway, batch.id) if s == "queued")
    admin(gateway, "PUT", "/budgets", json=budget | {"limit_usd": 100})
    final = wait_for(client, batch.id, timeout=60)
    assert final.status == "completed" and final.request_counts and final.request_counts.completed == 20
