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
from collections.abc import Awaitable, Callable

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard
from gateway.pipeline import fanout, merge, poll, route, submit, validate

log = logging.getLogger(__name__)

FAILED_STEP_RETRY_S = 5.0
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
    "collecting": merge.collect_shard,
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
        """Run claim loops until :meth:`stop` is called."""
        log.info("worker %s started", self.owner)
        loops = [asyncio.create_task(self._loop(n)) for n in range(self.settings.concurrency)]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()

    async def _loop(self, slot: int) -> None:
        while not self._stop.is_set():
            try:
                worked = await self.run_once()
            except Exception:
                log.exception("worker slot %s: step failed; retrying in %.0fs", slot, FAILED_STEP_RETRY_S)
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.settings.poll_interval_s)

    async def run_once(self) -> bool:
        """Claim and run one batch stage or one shard step; False when there was nothing to do."""
        return await self._run_batch_stage() or await self._run_shard_step()

    async def _run_batch_stage(self) -> bool:
        async with self.context.sessions() as session:
            batch = await repo.claim_batch(session, list(BATCH_STAGES), self.owner, self.settings.lease_s)
        if batch is None:
            return False
        heartbeat = asyncio.create_task(self._heartbeat(repo.extend_batch_lease, batch.id))
        retry_in: float | None = None
        try:
            await BATCH_STAGES[batch.stage](self.context, batch)
        except Exception:
            retry_in = FAILED_STEP_RETRY_S
            raise
        finally:
            heartbeat.cancel()
            async with self.context.sessions() as session:
                await repo.release_batch(session, batch.id, self.owner, retry_in=retry_in)
        return True

    async def _run_shard_step(self) -> bool:
        async with self.context.sessions() as session:
            shard = await shard_db.claim_shard(session, self.owner, self.settings.lease_s)
            batch = await repo.get_batch(session, None, shard.batch_id) if shard else None
        if shard is None or batch is None:
            return False
        heartbeat = asyncio.create_task(self._heartbeat(shard_db.extend_shard_lease, shard.id))
        retry_in: float | None = None
        try:
            await SHARD_STAGES[shard.state](self.context, shard, batch, self.owner)
        except Exception:
            retry_in = FAILED_STEP_RETRY_S
            raise
        finally:
            heartbeat.cancel()
            async with self.context.sessions() as session:
                await shard_db.release_shard(session, shard.id, self.owner, retry_in=retry_in)
        return True

    async def _heartbeat(self, extend: Callable[..., Awaitable[bool]], row_id: str) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            async with self.context.sessions() as session:
                if not await extend(session, row_id, self.owner, self.settings.lease_s):
                    log.warning("lost the lease on %s", row_id)
                    return
