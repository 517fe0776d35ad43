"""Workers frozen (SIGSTOP) past their lease at every stage, then woken (SIGCONT) while another worker has
taken over: the late worker can finish, publish and delete nothing, so the batch ends exact and every file
downloads.

Two ``batchgw worker`` processes and an API (``serve --no-worker``) on PostgreSQL: the first worker stops
itself at ``BATCHGW_FREEZE_AT``; the second takes the work once the short lease (3 s) has expired; the first
is woken while the second is still working, and both run to the end of the test.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess
from tests.engine import (
    api_without_worker,
    assert_all_succeeded,
    batch_creates,
    chat_requests,
    collect,
    emulator_log,
    query,
    reset,
    submit,
    wait_for,
    wait_frozen,
    worker_process,
)

REQUESTS = 20
SHARDS = 4
LEASE_S = 3.0
PROVIDERS: dict[str, dict[str, Any]] = {
    "quick": {"emulator": "steady", "models": {"gpt-4o-mini": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 5}},
}
MID_CREATE = "submit.before_provider_create:3"
"""The lease check's third pass in a worker that runs one shard step at a time: right before the create
request's body is written (the first pass is before the call, the second before the request's head)."""
POINTS = [
    "route.after_shards_written",
    "submit.before_provider_create",
    MID_CREATE,
    "submit.after_provider_create",
    "poll.after_status",
    "collect.after_split",
    "merge.after_files_written",
]


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory, database_kind: str
) -> GatewayProcess:
    return api_without_worker(
        gateway_factory,
        simulator,
        tmp_path_factory.mktemp("providers"),
        database_kind,
        PROVIDERS,
        BATCHGW_WORKER__LEASE_S=str(LEASE_S),
    )


@pytest.fixture
def workers(gateway: GatewayProcess) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for worker in started:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGCONT)
        worker.stop()


@pytest.mark.parametrize("point", POINTS)
def test_a_worker_frozen_past_its_lease_changes_nothing_when_it_wakes(
    point: str,
    client: openai.OpenAI,
    gateway: GatewayProcess,
    simulator: SimulatorCluster,
    workers: list[GatewayProcess],
) -> None:
    reset(simulator, "steady")
    requests = chat_requests(REQUESTS, prefix=point.replace(".", "-"))
    one_step_at_a_time = {"BATCHGW_WORKER__CONCURRENCY": "1"} if point == MID_CREATE else {}
    frozen = worker_process(gateway, f"frozen-{point}", BATCHGW_FREEZE_AT=point, **one_step_at_a_time).start("worker")
    workers.append(frozen)
    batch = submit(client, requests)
    wait_frozen(frozen)
    live = worker_process(gateway, f"live-{point}").start("worker")
    workers.append(live)
    time.sleep(LEASE_S * 1.5)  # the frozen worker's lease has expired: the live worker owns its work now
    assert frozen.process is not None
    frozen.process.send_signal(signal.SIGCONT)
    batch = wait_for(client, batch.id, timeout=90)
    assert batch.status == "completed", f"{batch}\n--- frozen:\n{frozen.log()}\n--- live:\n{live.log()}"

    outcome = collect(client, batch)  # downloads both files; every custom_id exactly once across them
    assert_all_succeeded(outcome, requests, "gpt-4o-mini")
    assert client.files.content(str(batch.output_file_id)).content

    # Each shard ran at the provider once, and was paid once; an orphan the late worker created was adopted.
    created = batch_creates(emulator_log(simulator, "steady"))
    creates = [e["detail"] for e in created]
    assert len(created) == SHARDS, f"{creates}\n--- frozen:\n{frozen.log()}\n--- live:\n{live.log()}"
    served = query(gateway, "SELECT count(*), count(DISTINCT shard_id) FROM ledger WHERE batch_id = :b", b=batch.id)
    assert served[0] == (SHARDS, SHARDS)
    time.sleep(LEASE_S)  # the woken worker has had time to try whatever it was doing
    files = query(gateway, "SELECT id FROM files WHERE id IN (:o, :e)", o=batch.output_file_id, e=batch.error_file_id)
    assert len(files) == 1
    assert client.files.content(str(batch.output_file_id)).content, "the woken worker deleted the live output"
    again = client.batches.retrieve(batch.id)
    assert (again.status, again.output_file_id) == ("completed", batch.output_file_id)
