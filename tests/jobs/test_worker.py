"""The worker's two lanes: a flood of new batches (validate, route) never starves the shards of a job that is
already running (submit, poll, collect), because each kind of work is claimed by a lane of its own. An idle
worker sleeps until its next work falls due, and on PostgreSQL wakes at once for work another process made."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import openai

from gateway.simulator import SimulatorCluster
from tests.conftest import simulated_provider_env
from tests.engine import admin, api_without_worker, chat_requests, reset, submit, wait_for, worker_process

CLIENTS = 50
RUNNING_JOB = 40
PROVIDERS: dict[str, dict[str, Any]] = {
    # The running job: four provider batches, one at a time, about a second each.
    "main": {
        "emulator": "steady",
        "models": {"gpt-4o-mini": "gpt-4o-mini"},
        "limits": {"max_requests_per_batch": 10, "max_batches_in_flight": 1},
    },
    # The flood's batches.
    "bulk": {"emulator": "fast", "models": {"llama-3.3-70b": "llama-3.3-70b"}},
}
FAST: dict[str, dict[str, Any]] = {"fast": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
LONG_IDLE = {"BATCHGW_WORKER__POLL_INTERVAL_S": "120", "BATCHGW_WORKER__IDLE_MAX_S": "120"}
"""Idle sleeps far longer than the tests wait: only a due time or a wake-up can start work in time."""


def flood(client: openai.OpenAI, stop: threading.Event, created: list[str], errors: list[BaseException]) -> None:
    """One client creating small batches back to back until told to stop."""
    while not stop.is_set():
        try:
            created.append(submit(client, chat_requests(2, model="llama-3.3-70b", prefix=f"flood-{len(created)}")).id)
        except BaseException as exc:
            errors.append(exc)
            return


def test_shards_of_a_running_job_progress_while_fifty_clients_create_batches(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "steady", "fast")
    env = simulated_provider_env(simulator, tmp_path, PROVIDERS)
    gateway = gateway_factory(env).start()
    key = gateway.create_key("acme")
    clients = [gateway.client(key, timeout=60) for _ in range(CLIENTS)]
    job = submit(clients[0], chat_requests(RUNNING_JOB, prefix="running"))
    wait_for(clients[0], job.id, until=lambda b: b.status == "in_progress", timeout=30)
    stop, created, errors = threading.Event(), [], []
    threads = [threading.Thread(target=flood, args=(c, stop, created, errors), daemon=True) for c in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        done = wait_for(clients[0], job.id, timeout=180)
        took = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors[:3]
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == RUNNING_JOB
    assert len(created) >= CLIENTS, "the flood created batches while the job ran"
    # The job's provider batches, one at a time, each about a second at the provider, were submitted,
    # polled and collected within seconds although intake never ran dry.
    shards = admin(gateway, f"/batches/{job.id}")["shards"]
    gaps = sorted(s["submitted_at"] for s in shards)
    print(f"running job finished {took:.1f}s into a flood of {len(created)} new batches from {CLIENTS} clients")
    assert len(shards) == RUNNING_JOB // 10
    # Starved, the job's shards waited 5-6 minutes; served in its own lane it ends within about 80 s even
    # when the whole suite loads two cores (63-80 s seen).
    assert took < 150, f"the running job took {took:.1f}s under the flood ({len(created)} batches created)"
    assert gaps[-1] - gaps[0] < 140  # every shard reached its provider while the flood went on


def test_an_idle_worker_sleeps_until_its_next_work_falls_due(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # One process: the API's new batch and every stage hand-off wake the worker in that process; the
    # provider poll 0.2 s after the submit wakes nobody, so only sleeping until it is due reaches it.
    reset(simulator, "fast")
    gateway = gateway_factory({**simulated_provider_env(simulator, tmp_path, FAST), **LONG_IDLE}).start()
    client = gateway.client(gateway.create_key("acme"), timeout=60)
    started = time.monotonic()
    done = wait_for(client, submit(client, chat_requests(5)).id, timeout=100)
    took = time.monotonic() - started
    assert done.status == "completed", done
    assert took < 60, f"the batch took {took:.1f}s: the worker slept past its due provider poll"


def test_a_worker_in_another_process_starts_at_once_on_a_new_batch(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path, database_kind: str
) -> None:
    # PostgreSQL only (several processes on one database): the API announces the batch with NOTIFY.
    reset(simulator, "fast")
    api = api_without_worker(gateway_factory, simulator, tmp_path, database_kind, FAST, **LONG_IDLE)
    worker = worker_process(api, "worker").start("worker")
    try:
        client = api.client(api.create_key("acme"), timeout=60)
        time.sleep(3)  # the worker has looked for work, found none, and sleeps its long idle
        started = time.monotonic()
        done = wait_for(client, submit(client, chat_requests(5)).id, timeout=100)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert done.status == "completed", done
    assert took < 60, f"the batch took {took:.1f}s: the idle worker did not hear of it\n{worker.log()[-3000:]}"
