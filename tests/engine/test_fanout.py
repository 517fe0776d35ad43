"""Synchronous fan-out: the gateway runs a shard request by request on an OpenAI-compatible endpoint.

Checked against the emulator's request log: the configured requests-per-minute limit holds, a burst
of 429s is waited out (honouring Retry-After), a worker killed mid-shard resumes without resending
the requests it had finished, and the output equals what the batch protocol gives for the same file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import (
    CHAT,
    chat_requests,
    collect,
    emulator_log,
    emulator_stats,
    reset,
    set_faults,
    submit,
    wait_for,
)

RPM = 600
CONCURRENCY = 4
PROVIDERS: dict[str, dict[str, Any]] = {
    # Same emulator, two kinds: "limited" is driven request by request, "batched" through batches.
    "limited": {
        "emulator": "other",
        "kind": "openai_sync",
        "models": {"sync-model": "gpt-4o-mini"},
        "limits": {"requests_per_minute": RPM, "max_concurrency": CONCURRENCY},
    },
    "batched": {"emulator": "fast", "models": {"batch-model": "gpt-4o-mini"}},
}


@pytest.fixture(scope="module")
def env(simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, env: dict[str, str]) -> GatewayProcess:
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def clean_emulators(simulator: SimulatorCluster) -> Iterator[None]:
    reset(simulator, "other", "fast")
    yield
    reset(simulator, "other", "fast")


def chat_calls(simulator: SimulatorCluster) -> list[dict[str, Any]]:
    return [e for e in emulator_log(simulator, "other") if e["method"] == "POST" and e["path"] == CHAT]


def test_rate_limit_holds(client: Any, simulator: SimulatorCluster) -> None:
    requests = chat_requests(40, model="sync-model")
    batch = wait_for(client, submit(client, requests).id)
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == 40 and not outcome.errors
    stamps = sorted(e["timestamp"] for e in chat_calls(simulator))
    assert len(stamps) == 40
    per_second = RPM / 60
    # Paced from the first request on, with no burst at start (the per-second bound leaves room for a
    # busy machine's jitter; tests/engine/test_fanout_limits.py holds four workers to the exact bound).
    assert stamps[-1] - stamps[0] >= (40 - 1) / per_second * 0.9
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 2 * per_second


def test_burst_of_429s_is_waited_out(client: Any, simulator: SimulatorCluster) -> None:
    set_faults(simulator, "other", rate_limit_next=6, retry_after_s=1)
    requests = chat_requests(12, model="sync-model", prefix="burst")
    batch = wait_for(client, submit(client, requests).id)
    outcome = collect(client, batch)
    assert batch.status == "completed"
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests) and not outcome.errors
    calls = chat_calls(simulator)
    limited = [e for e in calls if e["status"] == 429]
    answered = [e for e in calls if e["status"] == 200]
    assert len(limited) == 6 and len(answered) == 12
    # After the last 429 the adapter paused for its Retry-After: only requests already in flight
    # (one per concurrent slot at most) were answered during that second.
    last_429 = max(e["timestamp"] for e in limited)
    assert sum(1 for e in answered if last_429 < e["timestamp"] < last_429 + 0.9) <= CONCURRENCY
    assert max(e["timestamp"] for e in answered) - last_429 >= 0.9


def test_a_fan_out_held_by_429s_says_so_while_it_waits(client: Any, simulator: SimulatorCluster) -> None:
    set_faults(simulator, "other", rate_limit_rate=1.0, retry_after_s=3)
    requests = chat_requests(8, model="sync-model", prefix="storm")
    batch_id = submit(client, requests).id
    reason = ""
    deadline = time.monotonic() + 30
    while "rate limiting (HTTP 429)" not in reason:
        assert time.monotonic() < deadline, f"the batch never said a provider rate-limits it (last: {reason!r})"
        time.sleep(0.2)
        reason = (client.batches.retrieve(batch_id).metadata or {}).get("gateway_waiting", "")
    assert "limited is rate limiting (HTTP 429) until" in reason and "0 of 8 requests answered" in reason, reason
    set_faults(simulator, "other", rate_limit_rate=0.0)
    outcome = collect(client, wait_for(client, batch_id))
    assert outcome.batch.status == "completed" and len(outcome.output) == 8 and not outcome.errors


def test_rejected_request_goes_to_error_file(client: Any) -> None:
    requests = chat_requests(5, model="sync-model", prefix="bad")
    requests[2]["body"]["max_tokens"] = 0
    outcome = collect(client, wait_for(client, submit(client, requests).id))
    assert set(outcome.errors) == {"bad-00002"}
    assert outcome.errors["bad-00002"]["response"]["status_code"] == 400
    assert outcome.batch.request_counts is not None and outcome.batch.request_counts.failed == 1


def test_same_output_as_the_batch_protocol(client: Any) -> None:
    requests = chat_requests(15, model="sync-model", prefix="same")
    sync_outcome = collect(client, wait_for(client, submit(client, requests).id))
    for request in requests:
        request["body"]["model"] = "batch-model"
    batch_outcome = collect(client, wait_for(client, submit(client, requests).id))
    assert sorted(sync_outcome.output) == sorted(batch_outcome.output)
    for custom_id, line in sync_outcome.output.items():
        sync_body, batch_body = line["response"]["body"], batch_outcome.output[custom_id]["response"]["body"]
        assert sync_body["choices"] == batch_body["choices"]
        assert sync_body["usage"] == batch_body["usage"]
    assert sync_outcome.batch.usage == batch_outcome.batch.usage


def test_restart_mid_shard_does_not_resend_finished_requests(
    gateway_factory: Any, env: dict[str, str], simulator: SimulatorCluster
) -> None:
    api = gateway_factory(env).start("serve", "--no-worker")
    client = api.client(api.create_key("restart"))
    dying = GatewayProcess(
        api.data_dir, api.database_url, api.port, {**env, "BATCHGW_CRASH_AT": "fanout.after_request:15"}
    )
    dying.extra_env["BATCHGW_WORKER__LEASE_S"] = "3"
    requests = chat_requests(30, model="sync-model", prefix="restart")
    batch = submit(client, requests)
    dying.start("worker", wait_ready=False)
    assert dying.process is not None and dying.process.wait(timeout=60) == -9  # killed itself mid-shard
    sent_before = emulator_stats(simulator, "other")["requests_processed"]
    assert 15 <= sent_before < 30
    survivor = GatewayProcess(api.data_dir, api.database_url, api.port, {**env, "BATCHGW_WORKER__LEASE_S": "3"})
    survivor.start("worker", wait_ready=False)
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=90))
    finally:
        survivor.stop()
    assert outcome.batch.status == "completed"
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests) and not outcome.errors
    sent_total = emulator_stats(simulator, "other")["requests_processed"]
    # Only the requests in flight when the worker died (at most one per concurrent slot) went twice.
    assert 30 <= sent_total <= 30 + CONCURRENCY
