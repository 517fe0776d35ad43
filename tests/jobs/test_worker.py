"""The worker's two lanes: a flood of new batches (validate, route) never starves the shards of a job that is
already running (submit, poll, collect), because each kind of work is claimed by a lane of its own. An idle
worker sleeps until its next work falls due (a poll that finds its batch running wakes it when the next poll is
due, and nothing else), and on PostgreSQL wakes at once for work another process made.
A ``batchgw worker`` stopped with SIGTERM lets its running steps finish within its grace period (a fan-out hands
its shard over after the requests in flight); a step still running after it, or at a second SIGTERM, is stopped
and its lease released, so the next worker takes it at once, not after the lease. A claim that waits on the
database counts its lease from before it was sent, so the worker never counts on a row longer than the database
gives it."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest
from sqlalchemy import make_url
from sqlmodel import col, select

from gateway.context import GatewayContext
from gateway.db import local_wakeups
from gateway.db.engine import sqlite_file
from gateway.db.models import Batch, Shard, StoredFile, Team
from gateway.db.unit_of_work import reading, transaction
from gateway.jobs.worker import Worker
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, migrated_context, simulated_provider_env
from tests.engine import (
    admin,
    api_without_worker,
    chat_requests,
    collect,
    emulator_stats,
    query,
    reset,
    set_faults,
    submit,
    wait_for,
    worker_process,
)

CLIENTS = 50
RUNNING_JOB = 20
PROVIDERS: dict[str, dict[str, Any]] = {
    # The running job: two provider batches, one at a time, about a second each.
    "main": {
        "emulator": "steady",
        "models": {"gpt-4o-mini": "gpt-4o-mini"},
        "limits": {"max_requests_per_batch": 10, "max_batches_in_flight": 1},
    },
    # The flood's batches.
    "bulk": {"emulator": "fast", "models": {"llama-3.3-70b": "llama-3.3-70b"}},
}
FAST: dict[str, dict[str, Any]] = {"fast": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
PACED_RPM = 240
PACED: dict[str, dict[str, Any]] = {
    # Fan-out one request at a time, four a second: a shard step that runs for seconds.
    "paced": {
        "emulator": "other",
        "kind": "openai_sync",
        "models": {"gpt-4o-mini": "gpt-4o-mini"},
        "limits": {"requests_per_minute": PACED_RPM, "max_concurrency": 1},
    }
}
LONG_LEASE = {"BATCHGW_WORKER__LEASE_S": "60"}
"""A lease far longer than the tests wait: a shard a stopped worker kept would wait that long for the next one."""
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
    # Starved, each of the job's shards waited minutes (four took 5-6 minutes); served in its own lane, four
    # ended within 63-92 s when the whole suite loaded two cores, about 20 s a shard.
    assert took < 75, f"the running job took {took:.1f}s under the flood ({len(created)} batches created)"
    assert gaps[-1] - gaps[0] < 70  # every shard reached its provider while the flood went on


def one_batch_alone(gateway_factory: Any, simulator: SimulatorCluster, folder: Path, emulator: str) -> float:
    """Seconds one 5-request batch takes through a gateway of one process on ``emulator``, whose worker sleeps
    up to 120 s when idle: only a wake-up or a due time can move the batch on sooner."""
    reset(simulator, emulator)
    providers = {emulator: {"emulator": emulator, "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
    gateway = gateway_factory({**simulated_provider_env(simulator, folder, providers), **LONG_IDLE}).start()
    client = gateway.client(gateway.create_key("acme"), timeout=60)
    started = time.monotonic()
    done = wait_for(client, submit(client, chat_requests(5)).id, timeout=100)
    assert done.status == "completed", done
    return time.monotonic() - started


def test_an_idle_worker_sleeps_until_its_next_work_falls_due(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # The API's new batch and every stage hand-off wake the worker in that process; the provider poll 0.2 s after
    # the submit wakes nobody, so only sleeping until it is due reaches it.
    took = one_batch_alone(gateway_factory, simulator, tmp_path, "fast")
    assert took < 60, f"the batch took {took:.1f}s: the worker slept past its due provider poll"


def test_a_poll_that_finds_its_batch_running_wakes_the_worker_when_the_next_one_is_due(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # The provider takes 5 s, so polls find the batch running again and again. Such a poll makes nothing due now
    # and wakes no loop at once: the next poll is reached only by the wake-up set for its due time.
    took = one_batch_alone(gateway_factory, simulator, tmp_path, "slow")
    assert took < 20, f"the batch took {took:.1f}s: a poll that found it running was not followed by the next"


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


def processed(simulator: SimulatorCluster) -> int:
    return int(emulator_stats(simulator, "other")["requests_processed"])


def a_request_just_started(simulator: SimulatorCluster, timeout: float = 60) -> None:
    """Wait for an answer to arrive and the next request to be in flight: the stop that follows lands well before
    that request's answer (``SLOW_ANSWERS``), whatever the timing of the polls."""
    answered = processed(simulator)
    wait_until(lambda: processed(simulator) > answered, timeout, "no answer arrived")
    wait_until(lambda: emulator_stats(simulator, "other")["calls_in_flight"] > 0, timeout, "no next request")


def wait_until(check: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def paced_api(gateway_factory: Any, simulator: SimulatorCluster, folder: Path) -> tuple[GatewayProcess, openai.OpenAI]:
    """An API without a worker (and a client of it) on the paced fan-out provider, with long leases."""
    reset(simulator, "other")
    env = simulated_provider_env(simulator, folder, PACED) | LONG_LEASE
    api = gateway_factory(env).start("serve", "--no-worker")
    return api, api.client(api.create_key("acme"), timeout=60)


def owner_of(worker: GatewayProcess) -> str:
    """The lease owner name of a worker process (``host:pid``)."""
    assert worker.process is not None
    return f"{socket.gethostname()}:{worker.process.pid}"


def stopped_by_sigterm(worker: GatewayProcess, timeout: float, signals: int = 1) -> float:
    """SIGTERM (``signals`` times, 0.3 s apart) to a running ``batchgw worker``; the seconds it took to exit, which
    it did with status 0."""
    assert worker.process is not None
    started = time.monotonic()
    for sent in range(signals):
        if sent:
            time.sleep(0.3)
        worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=timeout) == 0, worker.log()[-3000:]
    return time.monotonic() - started


SLOW_ANSWERS = {"latency_s": 1.5}
"""Each answer of the provider takes longer than the grace of the stops below."""


@pytest.mark.parametrize(("grace_s", "signals"), [("0.3", 1), ("60", 2)], ids=["grace-ends", "second-signal"])
def test_a_worker_stopped_mid_request_releases_its_shard_and_the_next_worker_takes_it_at_once(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path, grace_s: str, signals: int
) -> None:
    api, client = paced_api(gateway_factory, simulator, tmp_path)
    requests = chat_requests(12, prefix="handover")
    # One shard step at a time: the lane waits for a free slot while the fan-out runs, and must notice the stop.
    first = worker_process(
        api, "first", BATCHGW_WORKER__SHUTDOWN_GRACE_S=grace_s, BATCHGW_WORKER__CONCURRENCY="1"
    ).start("worker")
    set_faults(simulator, "other", **SLOW_ANSWERS)
    batch = submit(client, requests)
    wait_until(lambda: processed(simulator) >= 2, 60, "the fan-out never started")
    # The request in flight outlasts both the grace and the gap between the two signals.
    a_request_just_started(simulator)
    took = stopped_by_sigterm(first, timeout=15, signals=signals)
    assert took < 5, f"the worker took {took:.1f}s to stop ({signals} signal(s), grace {grace_s} s)"
    log = first.log()
    assert "its lease is released" in log and f"worker {owner_of(first)} stopped" in log, log[-3000:]
    [(state, owner)] = query(api, "SELECT state, lease_owner FROM shards WHERE batch_id = :b", b=batch.id)
    assert (state, owner) == ("executing", None), "the stopped worker still holds the shard"
    if api.database_url.startswith("sqlite"):
        sockets = local_wakeups.directory_for(str(sqlite_file(api.database_url)))
        pid = first.process.pid if first.process else 0
        leftovers = list(sockets.glob(f"{pid}-*")) if sockets.exists() else []
        assert not leftovers, f"the stopped worker left its wake-up socket: {leftovers}"
    answered_before = processed(simulator)
    assert answered_before < len(requests), "the shard ended before the stop: nothing was handed over"

    set_faults(simulator, "other", latency_s=0)
    second = worker_process(api, "second").start("worker")
    try:
        # With the lease kept, the second worker could not start the shard for 60 s.
        wait_until(lambda: processed(simulator) > answered_before + 1, 15, "the next worker waited for the lease")
        outcome = collect(client, wait_for(client, batch.id, timeout=60))
    finally:
        second.stop()
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests)
    # Answers the stopped worker had recorded were not asked again; only the one in flight at most.
    assert len(requests) <= processed(simulator) <= len(requests) + 1


def test_a_stopped_worker_hands_its_fan_out_over_after_the_requests_in_flight_and_nothing_is_sent_twice(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    api, client = paced_api(gateway_factory, simulator, tmp_path)
    requests = chat_requests(20, prefix="grace")
    first = worker_process(api, "first", BATCHGW_WORKER__SHUTDOWN_GRACE_S="30").start("worker")
    batch = submit(client, requests)
    wait_until(lambda: processed(simulator) >= 2, 60, "the fan-out never started")
    took = stopped_by_sigterm(first, timeout=40)
    answered_before = processed(simulator)
    # The fan-out answered its request in flight and stopped there, well within the grace; nothing was cut off.
    assert took < 5, f"the worker took {took:.1f}s to hand over a fan-out answering four requests a second"
    assert answered_before < len(requests), "the shard ended before the stop: nothing was handed over"
    assert "stopped the step" not in first.log(), first.log()[-3000:]
    [(state, owner)] = query(api, "SELECT state, lease_owner FROM shards WHERE batch_id = :b", b=batch.id)
    assert (state, owner) == ("executing", None), (state, owner)

    second = worker_process(api, "second").start("worker")
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=60))
    finally:
        second.stop()
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests)
    assert processed(simulator) == len(requests), "a request was asked twice"


LOCK_HELD_S = 1.5


@contextmanager
def database_locked(context: GatewayContext) -> Iterator[None]:
    """Writes to the database wait about :data:`LOCK_HELD_S` from entering: another connection holds them off (a
    table lock on PostgreSQL, the write lock on SQLite), as a busy database or a frozen claim would."""
    url = make_url(context.settings.resolved_database_url)
    held = threading.Event()

    def hold() -> None:
        path = sqlite_file(url)
        if path is not None:
            with sqlite3.connect(path, isolation_level=None) as connection:
                connection.execute("BEGIN IMMEDIATE")
                held.set()
                time.sleep(LOCK_HELD_S)
                connection.execute("COMMIT")
            return
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo) as connection:
            connection.execute("LOCK TABLE batches, shards IN EXCLUSIVE MODE")  # reads go on, writes wait
            held.set()
            time.sleep(LOCK_HELD_S)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        yield
    finally:
        holder.join()


async def _claims_waiting_on_the_database(database_kind: str, folder: Path) -> None:
    async with migrated_context(database_kind, folder) as context:
        async with transaction(context.sessions) as session:
            team = Team(name="slow")
            session.add(team)
            await session.flush()
            stored = StoredFile(team_id=team.id, filename="in.jsonl", purpose="batch", storage_key="files/x")
            session.add(stored)
            await session.flush()
            batch = Batch(
                team_id=team.id, input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h",
                status="in_progress", stage="route", next_action_at=0,
            )  # fmt: skip
            session.add(batch)
            running = Batch(
                team_id=team.id, input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h",
                status="in_progress", stage="run",
            )  # fmt: skip
            session.add(running)
            await session.flush()
            session.add(Shard(batch_id=running.id, seq=0, provider="p", model="m", provider_model="m", input_key="k"))
        worker = Worker(context)
        lease_s = context.settings.worker.lease_s

        for table, claim in ((Batch, worker.claimed_batch), (Shard, worker.claimed_shard)):
            with database_locked(context):
                sent = time.monotonic()
                claimed = await claim()
            answered, answered_wall = time.monotonic(), time.time()
            assert claimed is not None, f"a due {table.__name__} row is claimed"
            lease = claimed[-1]
            assert answered - sent >= LOCK_HELD_S * 0.8, "the claim waited for the database"
            async with reading(context.sessions) as session:
                row = (await session.exec(select(table).where(col(table.lease_owner) == worker.owner))).one()
            database_left = row.lease_expires_at - answered_wall
            worker_left = lease.renewed_at + lease_s - answered
            assert database_left < lease_s - LOCK_HELD_S * 0.8, "the database's lease ran while the claim waited"
            assert worker_left <= database_left + 0.1, (
                f"the worker counts on its {table.__name__} lease {worker_left:.2f}s more, the database "
                f"{database_left:.2f}s: the lease must count from before the claim was sent"
            )


def test_a_claim_that_waits_on_the_database_counts_its_lease_from_before_it_was_sent(
    database_kind: str, tmp_path: Path
) -> None:
    asyncio.run(_claims_waiting_on_the_database(database_kind, tmp_path))
