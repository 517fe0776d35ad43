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
from gateway.db.models import Batch
from gateway.pipeline import validate

log = logging.getLogger(__name__)

StageEntry = Callable[[GatewayContext, Batch], Awaitable[None]]

BATCH_STAGES: dict[str, StageEntry] = {
    "validate": validate.run,
}
"""Pipeline stage name -> its entry function. A batch in stage ``done`` needs nothing."""


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
                log.exception("worker slot %s: stage failed; will retry after the lease expires", slot)
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.settings.poll_interval_s)

    async def run_once(self) -> bool:
        """Claim and run one batch stage; False when there was nothing to do."""
        async with self.context.sessions() as session:
            batch = await repo.claim_batch(session, list(BATCH_STAGES), self.owner, self.settings.lease_s)
        if batch is None:
            return False
        heartbeat = asyncio.create_task(self._heartbeat(batch.id))
        try:
            await BATCH_STAGES[batch.stage](self.context, batch)
        finally:
            heartbeat.cancel()
            async with self.context.sessions() as session:
                await repo.release_batch(session, batch.id, self.owner)
        return True

    async def _heartbeat(self, batch_id: str) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            async with self.context.sessions() as session:
                if not await repo.extend_batch_lease(session, batch_id, self.owner, self.settings.lease_s):
                    log.warning("lost the lease on batch %s", batch_id)
                    return
