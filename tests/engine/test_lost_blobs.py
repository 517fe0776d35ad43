"""Stored content that disappears (an operator's cleanup script, a lost disk) ends the work at once with a
clear error instead of a stage retried forever; everything already answered is still delivered.

* the input file's content is gone before validation: the batch fails with ``input_file_missing``;
* a queued shard's input is gone: its requests are reported lost, the rest of the batch completes;
* a collected shard's results are gone before the merge: its requests get ``result_lost`` error lines
  (from the shard's input), the rest is delivered, and the batch says what was lost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, loopback, simulated_provider_env
from tests.engine import chat_requests, collect, query, reset, submit, wait_for

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

PROVIDERS: dict[str, dict[str, Any]] = {
    "quick": {
        "emulator": "fast",
        "models": {"gpt-4o-mini": "gpt-4o-mini"},
        "limits": {"max_requests_per_batch": 5, "max_batches_in_flight": 1},
    },
    "lagging": {"emulator": "slow", "models": {"slow": "gpt-4o-mini"}},
}
GIVE_UP_WITHIN_S = 20.0
"""A lost blob cannot heal: the stage gives up on its first attempt, not after the retry budget."""


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def clean(simulator: SimulatorCluster) -> None:
    reset(simulator, "fast", "slow")


def blob(gateway: GatewayProcess, key: str) -> Path:
    return gateway.data_dir / "blobs" / key


def shards(gateway: GatewayProcess, batch_id: str) -> list[Any]:
    return query(
        gateway, "SELECT seq, state, input_key, output_key FROM shards WHERE batch_id = :b ORDER BY seq", b=batch_id
    )


def test_input_content_gone_before_validation_fails_the_batch_at_once(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    held = gateway_factory({"BATCHGW_WORKER__ENABLED_IN_SERVE": "false"}).start()
    client = held.client(held.create_key("acme"))
    batch = submit(client, chat_requests(3))
    [(key,)] = query(held, "SELECT storage_key FROM files WHERE id = :f", f=batch.input_file_id)
    blob(held, key).unlink()
    worker = GatewayProcess(held.data_dir, held.database_url, held.port, held.extra_env).start("worker")
    try:
        started = time.monotonic()
        done = wait_for(client, batch.id, timeout=GIVE_UP_WITHIN_S)
    finally:
        worker.stop()
    assert done.status == "failed" and time.monotonic() - started < GIVE_UP_WITHIN_S
    assert done.errors is not None
    [error] = done.errors.data
    assert error.code == "input_file_missing" and batch.input_file_id in (error.message or "")
    assert "Traceback" not in worker.log()


def test_a_queued_shard_whose_input_is_gone_is_reported_and_the_rest_completes(
    client: Any, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    requests = chat_requests(10)  # two shards of five at "quick", one provider batch at a time
    reset(simulator, "fast")
    loopback.post(f"{simulator.control_url}/providers/fast/faults", json={"latency_s": 0.3}, timeout=10)
    batch = submit(client, requests)
    deadline = time.monotonic() + 30
    while len(rows := shards(gateway, batch.id)) < 2 or rows[1][1] != "queued":
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    blob(gateway, rows[1][2]).unlink()
    done = wait_for(client, batch.id, timeout=GIVE_UP_WITHIN_S + 30)
    outcome = collect(client, done)
    assert done.status == "completed", done
    assert len(outcome.output) == 5 and all(line["error"] is None for line in outcome.output.values())
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 5)
    assert done.errors is not None
    [error] = [e for e in done.errors.data if e.code == "content_missing"]
    assert "5 request(s)" in (error.message or "") and "no longer stored" in (error.message or "")


def test_results_gone_before_the_merge_become_error_lines_and_the_rest_is_delivered(
    client: Any, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    quick = chat_requests(5, prefix="quick")
    lagging = chat_requests(3, model="slow", prefix="lagging")
    batch = submit(client, quick + lagging)
    deadline = time.monotonic() + 30
    while not [r for r in shards(gateway, batch.id) if r[1] == "done" and r[3]]:
        assert time.monotonic() < deadline, shards(gateway, batch.id)
        time.sleep(0.05)
    [finished] = [r for r in shards(gateway, batch.id) if r[1] == "done"]
    assert client.batches.retrieve(batch.id).status == "in_progress", "the slow shard is still running"
    blob(gateway, finished[3]).unlink()
    done = wait_for(client, batch.id, timeout=60)
    outcome = collect(client, done)
    assert done.status == "completed", done
    assert set(outcome.output) == {r["custom_id"] for r in lagging}
    assert set(outcome.errors) == {r["custom_id"] for r in quick}
    assert {line["error"]["code"] for line in outcome.errors.values()} == {"result_lost"}
    assert done.errors is not None
    [error] = [e for e in done.errors.data if e.code == "result_lost"]
    assert "5 request(s)" in (error.message or "")
    assert json.loads(client.files.content(str(done.error_file_id)).text.splitlines()[0])["provider"] == "quick"
