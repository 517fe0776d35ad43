"""The worker loop: claim a batch whose stage needs work, run that stage, release it.

Claims are leases with heartbeats, so a worker killed at any point leaves work that another
worker (or the same one restarted) picks up once the lease expires. Stages are idempotent: a
stage that ran halfway runs again from the state recorded in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.billing import webhooks
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard
from gateway.pipeline import collect, fanout, merge, poll, route, submit, validate
from gateway.routing import health

log = logging.getLogger(__name__)

FAILED_STEP_RETRY_S = 5.0
HEALTH_PROBE_EVERY_S = 2.0
"""A step that raised an unexpected error is retried after this delay (its lease is kept until then)."""

BatchStage = Callable[[GatewayContext, Batch], Awaitable[None]]
ShardStage = Callable[[GatewayContext, Shard, Batch, str], Awaitable[None]]

BATCH_STAGES: dict[str, BatchStage] = {
    "validate": validate.run,
    "route": route.run,
    "merge": merge.run,
}
"""Batch stage -> its entry. In stage ``run`` the batch's shards do the work; ``done`` needs nothing."""

SHARD_STAGES: dict[str, ShardStage] = {
    "queued": submit.run,
    "submitting": submit.run,
    "running": poll.run,
    "executing": fanout.run,
    "collecting": collect.collect_shard,
}
"""Shard state -> its entry. A shard in state ``done`` needs nothing."""


def worker_id() -> str:
    """A name unique to this process, recorded as lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Drives batches through the pipeline stages, ``concurrency`` at a time."""

    def __init__(self, context: GatewayContext, owner: str | None = None) -> None:
        self.context = context
        self.owner = owner or worker_id()
        self.settings = context.settings.worker
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the loops to finish their current stage and return."""
        self._stop.set()

    async def run(self) -> None:
        """Claim and run steps, ``concurrency`` at a time, until :meth:`stop` is called.

        One loop claims work (one query when idle, every ``poll_interval_s``); each claimed step
        runs in its own task while the loop claims the next, up to the concurrency limit.
        """
        log.info("worker %s started", self.owner)
        slots = asyncio.Semaphore(self.settings.concurrency)
        running: set[asyncio.Task[None]] = set()
        housekeeping = [
            asyncio.create_task(self._every(HEALTH_PROBE_EVERY_S, health.probe_open_circuits)),
            asyncio.create_task(webhooks.run_webhook_loop(self.context, self._stop)),
        ]
        try:
            while not self._stop.is_set():
                await slots.acquire()
                try:
                    step = await self._claim()
                except Exception:
                    log.exception("claiming work failed; retrying in %.1fs", self.settings.poll_interval_s)
                    step = None
                if step is None:
                    slots.release()
                    await self._idle()
                    continue
                task = asyncio.create_task(step)
                running.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    running.discard(done)
                    slots.release()

                task.add_done_callback(finished)
        finally:
            for task in housekeeping:
                task.cancel()
            await asyncio.gather(*housekeeping, return_exceptions=True)
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _every(self, seconds: float, job: Callable[[GatewayContext], Awaitable[None]]) -> None:
        """Run ``job`` every ``seconds`` until stopped; a failing run is logged and retried next time."""
        while not self._stop.is_set():
            try:
                await job(self.context)
            except Exception:
                log.exception("%s failed", getattr(job, "__name__", "housekeeping"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _idle(self) -> None:
        """Sleep until the next poll, or until this process announces new work, or until stopped."""
        wake = self.context.work_available
        waiters = [asyncio.create_task(self._stop.wait()), asyncio.create_task(wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.settings.poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        wake.clear()

    async def run_once(self) -> bool:
        """Claim and run one step in this task; False when there was nothing to do."""
        step = await self._claim()
        if step is None:
            return False
        await step
        return True

    async def _claim(self) -> Coroutine[Any, Any, None] | None:
        """The next step to run: a batch stage first, else a shard step; None when idle."""
        lease = self.settings.lease_s
        async with self.context.sessions() as session:
            batch = await repo.claim_batch(session, list(BATCH_STAGES), self.owner, lease)
            if batch is not None:
                return self._run_batch_stage(batch)
            shard = await shard_db.claim_shard(session, self.owner, lease)
            if shard is None:
                return None
            owner_batch = await repo.get_batch(session, None, shard.batch_id)
        if owner_batch is None:
            return None
        return self._run_shard_step(shard, owner_batch)

    async def _run_batch_stage(self, batch: Batch) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(repo.extend_batch_lease, batch.id))
        retry_in: float | None = None
        try:
            await BATCH_STAGES[batch.stage](self.context, batch)
        except Exception:
            retry_in = FAILED_STEP_RETRY_S
            log.exception("batch %s: stage %s failed; retrying in %.0fs", batch.id, batch.stage, retry_in)
        finally:
            heartbeat.cancel()
            async with self.context.sessions() as session:
                await repo.release_batch(session, batch.id, self.owner, retry_in=retry_in)

    async def _run_shard_step(self, shard: Shard, batch: Batch) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(shard_db.extend_shard_lease, shard.id))
        retry_in: float | None = None
        try:
            await SHARD_STAGES[shard.state](self.context, shard, batch, self.owner)
        except Exception:
            retry_in = FAILED_STEP_RETRY_S
            log.exception("shard %s: step %s failed; retrying in %.0fs", shard.id, shard.state, retry_in)
        finally:
            heartbeat.cancel()
            async with self.context.sessions() as session:
                await shard_db.release_shard(session, shard.id, self.owner, retry_in=retry_in)

    async def _heartbeat(self, extend: Callable[..., Awaitable[bool]], row_id: str) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            async with self.context.sessions() as session:
                if not await extend(session, row_id, self.owner, self.settings.lease_s):
                    log.warning("lost the lease on %s", row_id)
                    return
