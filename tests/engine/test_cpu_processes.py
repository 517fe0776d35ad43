"""The worker's CPU processes (:mod:`gateway.cpu_pool`) dying or freezing in the middle of a join on
``custom_id``: the shard's collection is tried again, and every request is answered, run and paid once.

The freeze point ``join.after_results`` stops a CPU process of the worker after it has written the shard's
answers and before it has written the rest; the tests then kill it, or kill or freeze its worker.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

import openai
import psutil
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, cpu_pool_processes, simulated_provider_env
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
    worker_process,
)

REQUESTS = 20
SHARDS = 4
PROVIDERS: dict[str, dict[str, Any]] = {
    "quick": {"emulator": "steady", "models": {"gpt-4o-mini": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 5}},
}
FREEZE = {
    "BATCHGW_FREEZE_AT": "join.after_results",
    "BATCHGW_WORKER__STAGE_RETRY_BASE_S": "0.2",
    # One CPU process: the freeze point stops each process once, and the tests follow the one that joins.
    "BATCHGW_WORKER__CPU_PROCESSES": "1",
}
LEASE_S = 3.0


def frozen_cpu_process(worker: psutil.Process, timeout: float = 60.0) -> psutil.Process:
    """The worker's CPU process once it stops at its freeze point."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in cpu_pool_processes(worker.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_STOPPED:
                    return child
        time.sleep(0.05)
    raise AssertionError("no CPU process of the worker reached the freeze point")


def assert_run_and_paid_once(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, batch_id: str, requests: Any
) -> None:
    batch = wait_for(client, batch_id, timeout=90)
    assert batch.status == "completed", batch
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    assert len(batch_creates(emulator_log(simulator, "steady"))) == SHARDS
    sql = "SELECT count(*), count(DISTINCT shard_id), sum(requests) FROM ledger WHERE batch_id = :b"
    assert query(gateway, sql, b=batch_id)[0] == (SHARDS, SHARDS, REQUESTS)


def test_a_cpu_process_killed_in_the_middle_of_a_join_fails_only_that_attempt(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Any
) -> None:
    reset(simulator, "steady")
    env = simulated_provider_env(simulator, tmp_path, PROVIDERS) | FREEZE
    gateway = gateway_factory(env).start()
    client = gateway.client(gateway.create_key("cpu"))
    requests = chat_requests(REQUESTS, prefix="killed-join")
    batch = submit(client, requests)
    assert gateway.process is not None
    serve = psutil.Process(gateway.process.pid)
    first = frozen_cpu_process(serve)
    first.kill()
    # The join runs again in a new CPU process, which passes the freeze point once too: let it go on.
    second = frozen_cpu_process(serve)
    assert second.pid != first.pid
    second.send_signal(signal.SIGCONT)
    assert_run_and_paid_once(client, gateway, simulator, batch.id, requests)
    log = gateway.log()
    assert "a CPU process ended while it ran split_results" in log, log[-3000:]


@pytest.mark.parametrize("fate", ["killed", "frozen"])
def test_a_worker_killed_or_frozen_while_its_cpu_process_joins_runs_and_pays_each_request_once(
    fate: str,
    gateway_factory: Any,
    simulator: SimulatorCluster,
    tmp_path_factory: pytest.TempPathFactory,
    database_kind: str,
) -> None:
    """Killed (SIGKILL): its CPU process ends too once it wakes. Frozen (SIGSTOP) past its lease with its CPU
    process in the middle of the join, then woken after the other worker took over: the late join is never
    adopted."""
    reset(simulator, "steady")
    api = api_without_worker(
        gateway_factory, simulator, tmp_path_factory.mktemp("providers"), database_kind, PROVIDERS,
        BATCHGW_WORKER__LEASE_S=str(LEASE_S),
    )  # fmt: skip
    client = api.client(api.create_key("cpu"))
    requests = chat_requests(REQUESTS, prefix=f"{fate}-join")
    first = worker_process(api, "first", **FREEZE).start("worker")
    batch = submit(client, requests)
    assert first.process is not None
    cpu_process = frozen_cpu_process(psutil.Process(first.process.pid))
    if fate == "killed":
        first.kill()
    else:
        first.process.send_signal(signal.SIGSTOP)
    second = worker_process(api, "second").start("worker")
    try:
        if fate == "killed":
            cpu_process.send_signal(signal.SIGCONT)  # it finishes a join no one will adopt, then finds its worker gone
            cpu_process.wait(timeout=30)  # raises psutil.TimeoutExpired if it lingers
        else:
            time.sleep(LEASE_S * 1.5)  # the second worker owns the shard now
            cpu_process.send_signal(signal.SIGCONT)
            first.process.send_signal(signal.SIGCONT)
        assert_run_and_paid_once(client, api, simulator, batch.id, requests)
        time.sleep(LEASE_S)  # a woken first worker has had time to try to close the shard it lost
        sql = "SELECT count(*), sum(requests) FROM ledger WHERE batch_id = :b"
        rows = query(api, "SELECT kind, shard_id, requests FROM ledger WHERE batch_id = :b", b=batch.id)
        assert query(api, sql, b=batch.id)[0] == (SHARDS, REQUESTS), f"the late join was adopted: {rows}"
    finally:
        second.stop()
        if first.process is not None and first.process.poll() is None:
            first.process.send_signal(signal.SIGCONT)
        first.stop()
