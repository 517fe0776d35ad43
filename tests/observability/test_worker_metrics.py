"""With an API process and a separate ``batchgw worker``, each event is counted once, by the worker that saw it;
state gauges come from the API, which reads them from the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, free_port, loopback
from tests.engine import chat_requests, submit, wait_for, worker_process
from tests.observability import provider_file, scrape, value


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = provider_file(simulator, tmp_path_factory.mktemp("providers"))
    return gateway_factory({**env, "BATCHGW_WORKER__ENABLED_IN_SERVE": "false"}).start()


@pytest.fixture(scope="module")
def worker_metrics_url(gateway: GatewayProcess) -> Iterator[str]:
    port = free_port()
    worker = worker_process(gateway, "worker", BATCHGW_METRICS__WORKER_PORT=str(port)).start("worker")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert worker.process is not None and worker.process.poll() is None, worker.log()
            try:
                loopback.get(f"{url}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, f"worker metrics never answered:\n{worker.log()}"
                time.sleep(0.2)
        yield url
    finally:
        worker.stop()


def test_each_process_counts_what_it_did(
    gateway: GatewayProcess, worker_metrics_url: str, client: openai.OpenAI
) -> None:
    batch = wait_for(client, submit(client, chat_requests(5)).id)
    assert batch.status == "completed"
    # The worker counts the batch's turnaround just after it commits the batch's end: a client may see it first.
    deadline = time.monotonic() + 10
    turnarounds = "batchgw_batch_turnaround_seconds_count"
    while value(from_worker := scrape(worker_metrics_url), turnarounds, provider="main") != 1:
        assert time.monotonic() < deadline, "the worker did not count the batch's turnaround"
        time.sleep(0.1)
    from_api = scrape(gateway.base_url)
    assert value(from_worker, "batchgw_requests_total", provider="main", outcome="succeeded") == 5
    assert value(from_api, "batchgw_requests_total", provider="main", outcome="succeeded") == 0
    assert value(from_api, "batchgw_batches", status="completed") == 1
    assert "batchgw_batches" not in from_worker and "batchgw_provider_up" not in from_worker
