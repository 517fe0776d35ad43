"""A provider's ``max_concurrency``: requests in flight at once, kept once for every process of the gateway.

**Contract.** A :class:`Slots` is held around each request to a synchronous provider (by the provider's
:class:`~gateway.routing.limits.PacedLimiter`): :meth:`Slots.hold` returns once the request may be in flight, and
the slot is free again when the block ends.

**Two kinds, chosen by the database** (:func:`gateway.routing.limits.limiter_for`):

- :class:`LocalSlots` (SQLite, one node): a semaphore of ``max_concurrency`` in this process.
- :class:`SharedSlots` (PostgreSQL, any number of replicas): each process holds a share of the limit in the
  database for a short lease (:func:`gateway.db.pacing.claim_slots`). While it has requests in flight or waiting,
  a keeper renews the share every :data:`RENEW_S` (at once when requests wait beyond it, at most every
  :data:`MIN_CLAIM_GAP_S`), so a share follows demand: processes that want slots get equal parts of the limit,
  and a process that wants fewer leaves the rest to the others; a process idle for :data:`IDLE_S` gives its share
  up. While a claim is on its way, the process may still send up to its last share, so the claim keeps that much
  in its row: a share shrinks at the claim after the one that decided it. The rows never add up to more than the
  limit (the smallest ``max_concurrency`` of the processes holding one, should their settings differ), so neither
  do the requests in flight. A process sends only while its lease may still hold (its own clock, started before
  the claim was sent, so it errs early), checked again just before each request leaves: one frozen (SIGSTOP) past
  its lease sends nothing more until it has claimed again, and the others take its share once the lease ends.
  What it had in flight when it froze is the one excess: those requests are already at the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import pacing as pacing_db

log = logging.getLogger(__name__)

LEASE_S = 5.0
"""How long a claimed share holds without being renewed."""
RENEW_S = 0.25
"""How often a process with requests in flight or waiting renews its share."""
MIN_CLAIM_GAP_S = 0.05
"""The shortest time between two claims of one process (requests waiting ask for a claim at once)."""
IDLE_S = 1.0
"""A process with no request for this long gives its share up and stops renewing it."""
RETRY_S = 1.0
"""Wait after a claim that failed (the database did not answer) before the next."""


class Held(Protocol):
    """A slot held by one request."""

    async def confirm(self) -> None:
        """Right before the request leaves: wait until this process may still send it (the wait for its moment may
        have outlived the share, as in a process frozen meanwhile)."""
        ...


class Slots(Protocol):
    """Requests one process may have in flight at one provider."""

    def hold(self) -> contextlib.AbstractAsyncContextManager[Held]:
        """Wait for a slot; it is held until the block ends."""
        ...

    async def close(self) -> None:
        """Give up what this process holds (it is stopping)."""
        ...


class _Kept:
    """A slot of this process's own: nothing to confirm."""

    async def confirm(self) -> None:
        return None


class LocalSlots:
    """``limit`` slots in this process's memory."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Held]:
        async with self._semaphore:
            yield _Kept()

    async def close(self) -> None:
        return None


def process_holder() -> str:
    """A name for this process among every gateway process on the database."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Ticket:
    """A slot of a :class:`SharedSlots` held by one request, and whether the request was sent."""

    def __init__(self, slots: SharedSlots) -> None:
        self.slots = slots
        self.sent = False

    async def confirm(self) -> None:
        slots = self.slots
        async with slots._changed:
            if not slots._may_go():
                slots._wanted.set()
                await slots._changed.wait_for(slots._may_go)
            slots.sent += 1
            self.sent = True


class SharedSlots:
    """This process's share of ``limit`` slots at ``provider``, claimed in the database (see the module docstring)."""

    def __init__(
        self, engine: AsyncEngine, provider: str, limit: int, holder: str | None = None, lease_s: float = LEASE_S
    ) -> None:
        self.engine, self.provider, self.limit = engine, provider, limit
        self.holder = holder or process_holder()
        self.lease_s = lease_s
        self.granted = 0
        """Slots this process may use, as its last claim found."""
        self.valid_until = -math.inf
        """When that claim may have run out (this process's monotonic clock)."""
        self.in_flight = 0
        """Requests holding a slot: waiting for their moment, or sent."""
        self.sent = 0
        """Requests sent and not yet answered: those at the provider."""
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._wanted = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Held]:
        async with self._changed:
            self.waiting += 1
            try:
                self._start_keeper()
                if self.in_flight + self.waiting > self.granted:
                    self._wanted.set()
                await self._changed.wait_for(self._may_hold)
            finally:
                self.waiting -= 1
            self.in_flight += 1
        ticket = _Ticket(self)
        try:
            yield ticket
        finally:
            async with self._changed:
                self.in_flight -= 1
                self.sent -= ticket.sent
                self._changed.notify_all()

    def _may_hold(self) -> bool:
        """A request may take a slot: the share has one free and the lease holds."""
        return self.in_flight < self.granted and time.monotonic() < self.valid_until

    def _may_go(self) -> bool:
        """A request holding a slot may be sent: fewer than the share are at the provider and the lease holds (a
        share that shrank meanwhile holds back the requests not sent yet, never those sent)."""
        return self.sent < self.granted and time.monotonic() < self.valid_until

    def _start_keeper(self) -> None:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep(), name=f"slots-{self.provider}")

    async def _keep(self) -> None:
        """Renew the share while requests come; give it up once none came for :data:`IDLE_S`."""
        idle_since: float | None = None
        while True:
            self._wanted.clear()  # before reading the demand: a request arriving during the claim asks again
            wanted = self.in_flight + self.waiting
            if wanted:
                idle_since = None
                await self._claim(wanted)
            elif idle_since is None:
                idle_since = time.monotonic()  # the lease (longer than IDLE_S) covers a short gap between requests
            elif time.monotonic() - idle_since >= IDLE_S:
                await self._give_up()
                if not self.in_flight + self.waiting:
                    return  # no await after this check: a request that comes later starts a new keeper
                idle_since = None
                continue
            await asyncio.sleep(MIN_CLAIM_GAP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), RENEW_S - MIN_CLAIM_GAP_S)

    async def _claim(self, wanted: int) -> None:
        sent = time.monotonic()
        # Until the answer comes, this process may send up to its current share: the row must cover that much.
        in_use = max(self.sent, self.granted if sent < self.valid_until else 0)
        try:
            granted = await pacing_db.claim_slots(
                self.engine, self.provider, self.holder, self.limit, wanted, in_use, self.lease_s
            )
        except Exception as exc:  # the database did not answer: the share lapses, requests wait
            log.warning("provider %s: could not renew this process's share of max_concurrency: %s", self.provider, exc)
            await asyncio.sleep(RETRY_S)
            return
        async with self._changed:
            self.granted = granted
            # The lease was stamped by the database after ``sent``: counting from ``sent`` ends it early, not late.
            self.valid_until = sent + self.lease_s
            self._changed.notify_all()

    async def _give_up(self) -> None:
        """Give the share up (nothing in flight): nothing may be sent on it from now on."""
        self.granted, self.valid_until = 0, -math.inf
        with contextlib.suppress(Exception):  # an unreachable database: the row's lease ends on its own
            await pacing_db.claim_slots(self.engine, self.provider, self.holder, self.limit, 0, 0, self.lease_s)

    async def close(self) -> None:
        """Stop renewing and give the share up (a process stopping: its lease would end on its own anyway)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        self.granted, self.valid_until = 0, -math.inf
        if not self.sent:
            with contextlib.suppress(Exception):
                await pacing_db.claim_slots(self.engine, self.provider, self.holder, self.limit, 0, 0, self.lease_s)


__all__ = ["Held", "LocalSlots", "SharedSlots", "Slots"]
