"""The worker: claim a batch or shard whose stage needs work, run that stage, release it.

The dispatch tables below are the one place that shows the order of the data path. Two lanes claim
work independently, so batch intake (validate, route, merge) never starves the shards of running jobs
(submit, poll, fan-out, collect) or the reverse. Claims are leases with fencing tokens and heartbeats
(:mod:`gateway.db.leases`): a worker killed at any point leaves work another worker picks up once the
lease expires, and a worker frozen past its lease has its stage cancelled when it wakes, and can write
nothing anyway. A stage that raises is retried with backoff up to ``worker.stage_max_attempts`` times, each
attempt recorded on the row; errors that cannot heal by retrying end the batch or shard at once with an
OpenAI-shaped error, keeping every answer already received.

A worker asked to stop (:meth:`Worker.stop`, on SIGTERM or Ctrl-C) claims nothing more and gives its running
steps ``worker.shutdown_grace_s`` to finish (a fan-out hands its shard over once its requests in flight are
answered). Then it stops them and releases their leases, so another worker takes them at once instead of after
the lease; a step stopped during a provider create keeps its lease instead (see
:attr:`~gateway.db.leases.Lease.kept_on_stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import batch_events
from gateway.billing import webhooks
from gateway.context import GatewayContext
from gateway.db import repo, wakeups
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard
from gateway.db.unit_of_work import reading, transaction
from gateway.jobs import blob_gc
from gateway.jobs.failures import attempt_entry, cannot_heal, describe, retry_delay
from gateway.pipeline import collect, fanout, merge, poll, route, settle, submit, validate
from gateway.routing import health

log = logging.getLogger(__name__)

HEALTH_PROBE_EVERY_S = 2.0

BatchStage = Callable[[GatewayContext, Batch, Lease], Coroutine[Any, Any, None]]
ShardStage = Callable[[GatewayContext, Shard, Batch, Lease], Coroutine[Any, Any, None]]

BATCH_STAGES: dict[str, BatchStage] = {
    "validate": validate.run,
    "route": route.run,
    "merge": merge.run,
}
"""Batch stage -> its entry. In stage ``run`` the batch's shards do the work; ``done`` needs nothing."""
BATCH_LANE, SHARD_LANE = "batch", "shard"
"""The lanes' names, which are also the kinds of work :class:`~gateway.context.WorkSignal` wakes them for."""
INTAKE_STAGES = ["validate", "route"]
BATCH_STAGE_HANDS_TO = {"validate": BATCH_LANE, "route": SHARD_LANE}
"""Batch stage -> the one lane its success can make work for (validation hands over to routing, routing to the
shards), the only one it wakes in this process; a stage not named here wakes every lane."""
CPU_STEP_MODULES = ("gateway.pipeline.input_lines", "gateway.pipeline.joining")
"""Modules of the steps the stages run in the CPU processes (:mod:`gateway.cpu_pool`), imported as they start."""
MIN_IDLE_S = 0.01
"""Shortest idle sleep: work due now that another worker claimed first is not retried in a busy loop."""

SHARD_STAGES: dict[str, ShardStage] = {
    "queued": submit.run,
    "submitting": submit.run,
    "executing": fanout.run,
    "running": poll.run,
    "collecting": collect.collect_shard,
}
"""Shard state -> its entry. A shard in state ``done`` needs nothing; ``held`` waits for its canary."""

BATCH_GIVE_UP: dict[str, Callable[[GatewayContext, Batch, Lease, str, str], Awaitable[None]]] = {
    "validate": validate.give_up,
    "route": route.give_up,
    "merge": merge.give_up,
}
"""Batch stage -> how it ends a batch whose stage cannot succeed (code, message)."""


def worker_id() -> str:
    """A name unique to this process, recorded as lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Lane:
    """One kind of work with its own concurrency."""

    name: str
    concurrency: int
    claim: Callable[[], Awaitable[Coroutine[Any, Any, None] | None]]
    batch_stages: Sequence[str]
    """Batch stages this lane claims (for when its next work falls due)."""
    shard_states: Sequence[str]
    """Shard states this lane claims."""


class Worker:
    """Drives batches through the pipeline stages in two lanes (batch stages, shard steps)."""

    def __init__(self, context: GatewayContext, owner: str | None = None) -> None:
        self.context = context
        self.owner = owner or worker_id()
        self.settings = context.settings.worker
        self._stop = asyncio.Event()
        self._halt = asyncio.Event()

    def stop(self) -> None:
        """Claim nothing more; running steps get ``worker.shutdown_grace_s`` to finish. A second call stops
        them at once. Either way a step stopped before its end releases its lease, unless it was stopped during
        a provider create (:attr:`~gateway.db.leases.Lease.kept_on_stop`)."""
        if self._stop.is_set():
            self._halt.set()
        self._stop.set()
        self.context.stopping.set()

    async def run(self) -> None:
        """Claim and run steps in both lanes until :meth:`stop` is called."""
        log.info("worker %s started", self.owner)
        self.context.cpu.warm(CPU_STEP_MODULES)
        lanes = [
            _Lane(BATCH_LANE, self.settings.batch_concurrency, self._claim_batch, ["merge", *INTAKE_STAGES], []),
            _Lane(SHARD_LANE, self.settings.concurrency, self._claim_shard, [], shard_db.ACTIVE_STATES),
        ]
        housekeeping = [
            asyncio.create_task(self._every(HEALTH_PROBE_EVERY_S, health.probe_open_circuits)),
            asyncio.create_task(self._every(self.settings.abandoned_sweep_s, self._settle_abandoned)),
            asyncio.create_task(self._every(self.settings.blob_gc_interval_s, self._collect_blobs)),
            asyncio.create_task(webhooks.run_webhook_loop(self.context, self._stop)),
            asyncio.create_task(batch_events.run_event_loop(self.context, self._stop)),
        ]
        if wakeups.announces(self.context.engine):
            wake = self.context.work_available.wake_local
            housekeeping.append(asyncio.create_task(wakeups.listen(self.context.engine, wake, self._stop)))
        try:
            await asyncio.gather(*(self._run_lane(lane) for lane in lanes))
        finally:
            for task in housekeeping:
                task.cancel()
            await asyncio.gather(*housekeeping, return_exceptions=True)
            log.info("worker %s stopped", self.owner)

    async def _run_lane(self, lane: _Lane) -> None:
        """Claim work of one lane, up to its concurrency, each step in its own task."""
        slots = asyncio.Semaphore(lane.concurrency)
        running: set[asyncio.Task[None]] = set()
        try:
            while await self._free_slot(slots):
                try:
                    step = await lane.claim()
                except Exception:
                    log.exception("claiming %s work failed; retrying", lane.name)
                    step = None
                if step is None:
                    slots.release()
                    await self._idle(lane)
                    continue
                task = asyncio.create_task(step)
                running.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    running.discard(done)
                    slots.release()

                task.add_done_callback(finished)
        finally:
            if running:
                await self._drain(running)

    async def _free_slot(self, slots: asyncio.Semaphore) -> bool:
        """Take a slot of the lane once one is free; False (and no slot taken) once the worker is stopping."""
        if self._stop.is_set():
            return False
        acquired = asyncio.ensure_future(slots.acquire())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([acquired, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not acquired.done():
            acquired.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquired
        if acquired.done() and not acquired.cancelled() and self._stop.is_set():
            slots.release()
        return not self._stop.is_set()

    async def _drain(self, running: set[asyncio.Task[None]]) -> None:
        """Wait for a lane's running steps; once the worker is stopping, only until the grace period ends."""
        steps = list(running)
        if self._stop.is_set():
            grace = self.settings.shutdown_grace_s
            log.info("worker %s stopping: %d %s running, waiting up to %.0fs", self.owner, len(steps),
                     "step" if len(steps) == 1 else "steps", grace)  # fmt: skip
            finished: asyncio.Future[Any] = asyncio.gather(*steps, return_exceptions=True)
            halted: asyncio.Future[Any] = asyncio.ensure_future(self._halt.wait())
            await asyncio.wait([finished, halted], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            halted.cancel()
            for step in steps:
                step.cancel()  # no-op for a step that has ended
        await asyncio.gather(*steps, return_exceptions=True)

    async def _every(self, seconds: float, job: Callable[[GatewayContext], Awaitable[None]]) -> None:
        """Run ``job`` every ``seconds`` until stopped; a failing run is logged and retried next time."""
        while not self._stop.is_set():
            try:
                await job(self.context)
            except Exception:
                log.exception("%s failed", getattr(job, "__name__", "housekeeping"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _collect_blobs(self, context: GatewayContext) -> None:
        await blob_gc.collect_garbage(context)

    async def _settle_abandoned(self, context: GatewayContext) -> None:
        await settle.run_due(context, self.owner, self.settings.lease_s)

    async def _idle(self, lane: _Lane) -> None:
        """Sleep until the lane's next work falls due, a hand-off announces new work, or the worker stops.

        Work another process creates is announced on PostgreSQL, so there the sleep may last up to
        ``worker.idle_max_s``; on SQLite only processes of this machine announce it (see
        :mod:`gateway.db.wakeups`), and the sleep lasts at most ``worker.poll_interval_s``.
        """
        settings = self.settings
        ticket = self.context.work_available.ticket(lane.name)
        longest = settings.idle_max_s if wakeups.notifies(self.context.engine) else settings.poll_interval_s
        try:
            async with reading(self.context.sessions) as session:
                due = await wakeups.next_due_at(session, lane.batch_stages, lane.shard_states)
        except Exception:
            log.exception("reading when %s work falls due failed; polling", lane.name)
            due = None
            longest = settings.poll_interval_s
        stop = asyncio.create_task(self._stop.wait())
        sleep_s = max(MIN_IDLE_S, wakeups.seconds_until(due, longest))
        wake = asyncio.create_task(self.context.work_available.wait(sleep_s, ticket))
        try:
            await asyncio.wait([stop, wake], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def run_once(self) -> bool:
        """Claim and run one step (a batch stage first) in this task; False when there was nothing to do."""
        step = await self._claim_batch() or await self._claim_shard()
        if step is None:
            return False
        await step
        return True

    async def _claim_batch(self) -> Coroutine[Any, Any, None] | None:
        claimed = await self.claimed_batch()
        return None if claimed is None else self._run_batch_stage(*claimed)

    async def _claim_shard(self) -> Coroutine[Any, Any, None] | None:
        claimed = await self.claimed_shard()
        return None if claimed is None else self._run_shard_step(*claimed)

    async def claimed_batch(self) -> tuple[Batch, Lease] | None:
        """A due batch (merges first, then intake) this worker now holds, with its lease; None when none is due.

        The lease counts from before the claim was sent (see :attr:`Lease.renewed_at`): however long the claim's
        answer takes, this worker never counts on the row for longer than the database gives it."""
        lease_s = self.settings.lease_s
        sent_at = time.monotonic()
        async with transaction(self.context.sessions) as session:
            # A batch whose requests are all answered is merged before new batches are taken in.
            batch = await repo.claim_batch(session, ["merge"], self.owner, lease_s)
            if batch is None:
                batch = await repo.claim_batch(session, INTAKE_STAGES, self.owner, lease_s)
        if batch is None:
            return None
        return batch, Lease(self.owner, batch.lease_token, lease_s, renewed_at=sent_at)

    async def claimed_shard(self) -> tuple[Shard, Batch, Lease] | None:
        """A due shard this worker now holds, with its batch and its lease (counted as :meth:`claimed_batch`'s);
        None when none is due."""
        lease_s = self.settings.lease_s
        sent_at = time.monotonic()
        async with transaction(self.context.sessions) as session:
            shard = await shard_db.claim_shard(session, self.owner, lease_s)
            batch = await repo.get_batch(session, None, shard.batch_id) if shard is not None else None
        if shard is None:
            return None
        lease = Lease(self.owner, shard.lease_token, lease_s, renewed_at=sent_at)
        if batch is None:
            async with transaction(self.context.sessions) as session:
                await shard_db.release_shard(session, shard.id, lease)
            return None
        return shard, batch, lease

    async def _run_batch_stage(self, batch: Batch, lease: Lease) -> None:
        stage = batch.stage
        extend = repo.extend_batch_lease
        async with self._released_if_stopped(repo.release_batch, batch.id, lease):
            error = await self._supervised(BATCH_STAGES[stage](self.context, batch, lease), extend, batch.id, lease)
        if error is None:
            async with transaction(self.context.sessions) as session:
                await repo.release_batch(session, batch.id, lease)
            self.context.work_available.set(BATCH_STAGE_HANDS_TO.get(stage))
            return
        attempts = batch.stage_attempts + 1
        entry = attempt_entry(stage, error)
        if cannot_heal(error) or attempts >= self.settings.stage_max_attempts:
            code, message = _final_error(stage, error, attempts)
            log.error("batch %s: stage %s gave up after %d attempt(s): %s", batch.id, stage, attempts, message)
            async with transaction(self.context.sessions) as session:
                await repo.record_batch_failure(session, batch.id, lease, entry, retry_at=None)
            try:
                await BATCH_GIVE_UP[stage](self.context, batch, lease, code, message)
            finally:
                async with transaction(self.context.sessions) as session:
                    await repo.release_batch(session, batch.id, lease)
            self.context.work_available.set()
            return
        delay = retry_delay(attempts, self.settings.stage_retry_base_s, self.settings.stage_retry_max_s)
        log.warning(
            "batch %s: stage %s failed (attempt %d of %d), retrying in %.0fs: %s",
            batch.id, stage, attempts, self.settings.stage_max_attempts, delay, entry["message"],
        )  # fmt: skip
        async with transaction(self.context.sessions) as session:
            await repo.record_batch_failure(session, batch.id, lease, entry, retry_at=time.time() + delay)

    async def _run_shard_step(self, shard: Shard, batch: Batch, lease: Lease) -> None:
        state = shard.state
        step = SHARD_STAGES[state](self.context, shard, batch, lease)
        async with self._released_if_stopped(shard_db.release_shard, shard.id, lease):
            error = await self._supervised(step, shard_db.extend_shard_lease, shard.id, lease)
        if error is None:
            async with transaction(self.context.sessions) as session:
                if shard.stage_attempts and not lease.lost:
                    await shard_db.save_shard(session, shard, lease, stage_attempts=0)
                await shard_db.release_shard(session, shard.id, lease)
                left = await shard_db.state_and_due(session, shard.id)
            self._wake_after(state, left)
            return
        attempts = shard.stage_attempts + 1
        entry = attempt_entry(state, error)
        if cannot_heal(error) or attempts >= self.settings.stage_max_attempts:
            code, message = _final_error(state, error, attempts)
            log.error("shard %s: step %s gave up after %d attempt(s): %s", shard.id, state, attempts, message)
            try:
                await collect.give_up(self.context, shard, batch, lease, code, message, entry)
            except Exception:
                log.exception("shard %s: ending it after a failed step failed too; retrying", shard.id)
                async with transaction(self.context.sessions) as session:
                    await shard_db.record_shard_failure(
                        session, shard, lease, entry, time.time() + self.settings.stage_retry_max_s, message
                    )
                return
            async with transaction(self.context.sessions) as session:
                await shard_db.release_shard(session, shard.id, lease)
            self.context.work_available.set()
            return
        delay = retry_delay(attempts, self.settings.stage_retry_base_s, self.settings.stage_retry_max_s)
        wait = (
            f"step '{state}' failed (attempt {attempts} of {self.settings.stage_max_attempts}): "
            f"{entry['message']}; retrying at {time.strftime('%H:%M:%S', time.gmtime(time.time() + delay))} UTC"
        )
        log.warning("shard %s: %s", shard.id, wait)
        async with transaction(self.context.sessions) as session:
            await shard_db.record_shard_failure(session, shard, lease, entry, time.time() + delay, wait)

    def _wake_after(self, state: str, left: tuple[str, float] | None) -> None:
        """Wake the loops for what a finished shard step left (``left``: the shard's state and due time after it).

        A step that only put its own shard off (a poll that saw its batch still running) made nothing due now:
        this process's shard loops are woken when the shard falls due, and no other process is woken (each finds
        it at its next look). A step that left its shard open (a hand-off to the shard's next step, a shard made
        due now) made work for shard loops only: here only they are woken, and other processes are told. A step
        that ended its shard may have made its batch's merge due: every loop is woken, here and where they can be
        told."""
        signal = self.context.work_available
        if left is not None and left[0] == state and (delay := left[1] - time.time()) > 0:
            asyncio.get_running_loop().call_later(delay, signal.wake_local, SHARD_LANE)
            return
        signal.set(SHARD_LANE if left is not None and left[0] in shard_db.ACTIVE_STATES else None)

    @contextlib.asynccontextmanager
    async def _released_if_stopped(
        self, release: Callable[[Any, str, Lease], Awaitable[None]], row_id: str, lease: Lease
    ) -> AsyncIterator[None]:
        """A step the stopping worker cancels releases its lease (fenced), so another worker need not wait for it
        to expire. What the step committed stands; what it did not is redone by that worker, as after a crash."""
        try:
            yield
        except asyncio.CancelledError:
            if self._stop.is_set() and lease.kept_on_stop and not lease.lost:
                log.warning("stopped the step on %s during a provider create; it is taken over when its lease "
                            "expires", row_id)  # fmt: skip
            elif self._stop.is_set() and not lease.lost:
                try:
                    async with transaction(self.context.sessions) as session:
                        await release(session, row_id, lease)
                    log.warning("stopped the step on %s before its end; its lease is released", row_id)
                    self.context.work_available.set()
                except Exception:
                    log.warning("releasing %s on stop failed; it is taken over when its lease expires", row_id)
            raise

    async def _supervised(
        self,
        work: Coroutine[Any, Any, None],
        extend: Callable[[Any, str, Lease], Awaitable[bool]],
        row_id: str,
        lease: Lease,
    ) -> BaseException | None:
        """Run a stage under heartbeats; the error it raised, or None.

        A lost lease (another worker claimed the row, or this process was frozen past the lease) cancels
        the stage at once; its fenced writes would fail anyway. That is not an error of the stage.
        """
        task = asyncio.create_task(work)
        beat = asyncio.create_task(self._heartbeat(extend, row_id, lease, task))
        try:
            await task
        except asyncio.CancelledError:
            if not lease.lost:
                raise
            log.warning("lost the lease on %s: its stage was stopped", row_id)
            return None
        except Exception as exc:
            if lease.stale:
                # Lost, or run out while the stage ran (a frozen process that woke): the row may be another
                # worker's now, so this failure is not this worker's to count, retry or end the row with (ending
                # it would register and cancel a provider batch the new owner may have collected already).
                lease.lost = True
                log.warning("lost the lease on %s: its stage stopped (%s)", row_id, type(exc).__name__)
                return None
            return exc
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return None

    async def _heartbeat(
        self,
        extend: Callable[[Any, str, Lease], Awaitable[bool]],
        row_id: str,
        lease: Lease,
        stage: asyncio.Task[None],
    ) -> None:
        interval = lease.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            if lease.stale:
                # Frozen past the lease (or the database was unreachable that long): another worker may own
                # the row by now. Stop before the stage does anything more.
                lease.lost = True
            else:
                sent_at = time.monotonic()
                try:
                    async with transaction(self.context.sessions) as session:
                        held = await extend(session, row_id, lease)
                except Exception:
                    log.warning("heartbeat for %s failed; retrying", row_id, exc_info=True)
                    continue
                if held:
                    lease.renewed(sent_at)
                    continue
                lease.lost = True
            stage.cancel()
            return


def _final_error(stage: str, error: BaseException, attempts: int) -> tuple[str, str]:
    """The code and message a stage's last failure ends its batch or shard with."""
    code, detail = describe(error)
    if cannot_heal(error):
        return code, detail
    return "stage_failed", f"the '{stage}' step failed {attempts} times; last error: {detail}"
