"""Two worker processes share one large job on PostgreSQL: every shard submitted once, both did work."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess
from tests.engine import (
    api_without_worker,
    assert_all_succeeded,
    assert_submitted_once,
    batch_creates,
    chat_requests,
    collect,
    emulator_log,
    reset,
    set_faults,
    submit,
    wait_for,
    worker_process,
)

REQUESTS = 2000
PER_SHARD = 100
PROVIDERS: dict[str, dict[str, Any]] = {
    "bulk": {
        "emulator": "fast",
        "models": {"gpt-4o-mini": "gpt-4o-mini"},
        "limits": {"max_requests_per_batch": PER_SHARD},
    },
}
SUBMITTED = re.compile(r"shard (\S+) submitted to bulk as (\S+)")


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
        BATCHGW_WORKER__LEASE_S="5",
    )


@pytest.fixture
def workers(gateway: GatewayProcess) -> Iterator[list[GatewayProcess]]:
    started = [worker_process(gateway, f"worker-{n}").start("worker") for n in range(2)]
    yield started
    for worker in started:
        worker.stop()


def test_two_workers_share_a_large_job_without_duplicate_submission(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, workers: list[GatewayProcess]
) -> None:
    reset(simulator, "fast")
    set_faults(simulator, "fast", latency_s=0.05)
    requests = chat_requests(REQUESTS)
    batch = wait_for(client, submit(client, requests).id, timeout=120)
    assert_all_succeeded(
        collect(client, batch),
        requests,
        "gpt-4o-mini",
    )
    creates = batch_creates(emulator_log(simulator, "fast"))
    assert len(creates) == REQUESTS // PER_SHARD
    assert all(e["detail"]["input_lines"] == PER_SHARD for e in creates)
    assert_submitted_once(gateway, simulator, "fast", batch.id)
    submitted_by = [dict(SUBMITTED.findall(worker.log())) for worker in workers]
    assert all(submitted_by), "a worker submitted no shard"
    assert not set(submitted_by[0]) & set(submitted_by[1]), "a shard was submitted by both workers"
    assert sum(map(len, submitted_by)) == REQUESTS // PER_SHARD
