"""Provider rate limits, kept once for every process of the gateway.

**Contract.** :class:`RequestLimiter`: whoever sends requests to a provider one by one (the synchronous
adapter, for every try of every request of the fan-out stage) holds :meth:`RequestLimiter.slot` while the
request runs, and calls :meth:`RequestLimiter.rate_limited` when the provider answers 429. The limits are
the provider's ``[limits]``: ``max_concurrency`` (requests in flight at once, see :mod:`gateway.routing.slots`),
``requests_per_minute``, ``tokens_per_minute`` (a request counts its estimated tokens) and the pause a
429's ``Retry-After`` asks for. The engine hands each such adapter its limiter (:func:`hand_limiters`);
the adapter itself knows nothing of databases.

**Pacing.** Each provider has one *timeline*. A request costs a stretch of it: ``60 / requests_per_minute``
seconds, or its tokens' share of ``tokens_per_minute`` when that is longer, and it is sent at the start of
its stretch; stretches never overlap and never start before "now". This is the virtual-scheduling form of
the generic cell rate algorithm with no burst allowance: requests leave evenly spaced, so no one-second
window holds more than ``ceil(requests_per_minute / 60)`` of them, give or take one, neither at start nor
after an idle spell (time nobody used is lost, not saved up). A stretch as long as the larger of the two
costs is exactly what two separate burst-free limiters, one per limit, would allow. A process too busy to
send a request on time does not catch up in a burst: a request later than half its own stretch (at least
:data:`MIN_LATE_S`, at most :data:`MAX_LATE_S`) gives its moment up and queues once more (once: a process
always that late must still send). Requests leaving within half a stretch of their moments keep every
second within ``ceil(requests_per_minute / 60) + 1``, up to 15,000 a minute; faster, the 2 ms allowed
late add at most ``requests_per_minute / 30,000`` (0.2%). A stalled process loses moments, never bursts.

**Two timelines, chosen by the database** (:func:`limiter_for`):

- :class:`LocalTimeline` (SQLite, one node): the timeline and the pause live in this process's memory.
- :class:`SharedTimeline` (PostgreSQL, any number of replicas): they live in the database
  (``provider_pacing.next_free_at`` and ``provider_health.rate_limited_until``, see
  :mod:`gateway.db.pacing`). A process reserves a *chunk* of the timeline in one atomic
  ``UPDATE ... RETURNING`` (what its waiting requests need, or what it used over the last :data:`CHUNK_S`
  if that is more, and at most :data:`CHUNK_S`), then shares it out among its requests without another
  round trip: about ten round trips a second per busy process, whatever the rate. The chunks of all
  processes follow each other on the one line, so together they keep the limits exactly, whatever the
  number of replicas. A stretch reserved and not used (request cancelled, process killed) is lost: mistakes
  only ever fall below the limit. Times are the database's clock; each process places them on its own
  (:class:`DatabaseClock`, learnt from a few round trips before the first reservation and kept fresh by every
  one after), so nodes' clocks need not agree.

**The 429 pause.** :meth:`RequestLimiter.rate_limited` moves the provider's pause end forward (never back)
for every process: the shared timeline writes it to the database at once, and no reservation starts inside
it. Other processes learn of it with their next reservation, or at the latest :data:`PAUSE_FRESH_S` later
(while requests come, each process reads it in the background, so no request waits for the reading). A
stretch that turns out to lie inside a pause is given up and its request queues again, so a pause ends as
smoothly as a start.

``max_concurrency`` is shared too, through the database on PostgreSQL (:mod:`gateway.routing.slots`): the
replicas together keep at most that many requests in flight. Batch providers' API calls (submit, poll, downloads)
are not paced: they are few, and their providers limit batches, not calls.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db import pacing as pacing_db
from gateway.providers.base import ProviderAdapter
from gateway.providers.config import ProviderLimits
from gateway.routing.slots import LocalSlots, SharedSlots, Slots

log = logging.getLogger(__name__)

CHUNK_S = 0.1
"""The most of a shared timeline one process reserves in one round trip, and how far ahead it plans."""
USE_WINDOW_S = 1.0
"""How far back a process looks to see how much of the timeline it uses."""
PAUSE_FRESH_S = 0.5
"""While requests come, a process reads a provider's shared 429 pause this often (in the background)."""
WATCH_IDLE_S = 5.0
"""A process stops reading the shared pause when no request came for this long."""
DEFAULT_RATE_LIMIT_PAUSE_S = 5.0
"""Pause after a 429 that named no time."""
MAX_PAUSE_S = 120.0
"""The longest pause a 429 can impose."""
MAX_LATE_S = 0.05
"""The latest a request may leave after its moment: half its stretch, within MIN_LATE_S and MAX_LATE_S."""
MIN_LATE_S = 0.002
"""At high rates half a stretch is shorter than a busy event loop's lag: this much is always allowed."""
CLOCK_PROBES = 3
"""Round trips a shared timeline spends reading the database's clock before it first places a time on it: the
first reading alone may have come back late (a busy process) and would place this process's moments off by
up to half its round trip, while every other process keeps its own."""
CLOCK_AGING = 1e-3
"""Seconds per second by which a measured database round trip counts as slower as it ages."""
_SLACK_S = 1e-6


class RequestLimiter(Protocol):
    """One provider's limits, as whoever sends it requests one by one sees them."""

    def slot(self, estimated_tokens: int) -> AbstractAsyncContextManager[None]:
        """Wait for a concurrency slot and for the moment this request may leave; hold the slot while it runs."""
        ...

    async def rate_limited(self, retry_after_s: float | None) -> None:
        """The provider answered 429: hold every request to it for ``retry_after_s`` (a default if None)."""
        ...

    def paused_for(self) -> float:
        """Seconds until the provider's last 429 pause, as this process knows it, ends (0: not paused)."""
        ...


@runtime_checkable
class Paced(Protocol):
    """An adapter that sends requests one by one and takes the limiter the engine hands it."""

    @property
    def limiter(self) -> RequestLimiter:
        """The limiter every request and retry goes through."""
        ...

    def use_limiter(self, limiter: RequestLimiter) -> None:
        """Pace every request (and every retry) with ``limiter`` from now on."""
        ...


@dataclass(frozen=True)
class Pace:
    """What one request costs of a provider's timeline, in seconds."""

    request_s: float = 0.0
    """``60 / requests_per_minute``; 0 without that limit."""
    tokens_per_s: float | None = None
    """``tokens_per_minute / 60``; None without that limit."""

    @classmethod
    def of(cls, limits: ProviderLimits) -> Pace:
        """The pace of a provider's configured limits."""
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        return cls(60.0 / rpm if rpm else 0.0, tpm / 60.0 if tpm else None)

    def cost(self, estimated_tokens: int) -> float:
        """Seconds of the timeline one request takes (0: not paced at all)."""
        if self.tokens_per_s is None:
            return self.request_s
        # A request larger than a minute's tokens still goes, taking the whole minute.
        token_s = min(max(estimated_tokens, 1) / self.tokens_per_s, 60.0)
        return max(self.request_s, token_s)


class Timeline(abc.ABC):
    """Where a provider's timeline and 429 pause are kept. Times are this process's ``time.monotonic()``."""

    in_process: ClassVar[bool] = False
    """True when no other process changes it (nothing to watch)."""

    @abc.abstractmethod
    async def reserve(self, seconds: float) -> tuple[float, float]:
        """Reserve the next free ``seconds``; returns when they start and when the pause ends."""

    @abc.abstractmethod
    async def pause(self, seconds: float) -> float:
        """Extend the pause to at least ``seconds`` from now; returns when it ends."""

    @abc.abstractmethod
    async def paused_until(self) -> float:
        """When the pause ends (in the past when there is none)."""


class LocalTimeline(Timeline):
    """A timeline in this process's memory: one node, one worker process."""

    in_process = True

    def __init__(self) -> None:
        self.next_free_at = 0.0
        self.pause_ends_at = 0.0

    async def reserve(self, seconds: float) -> tuple[float, float]:
        start = max(time.monotonic(), self.next_free_at, self.pause_ends_at)
        self.next_free_at = start + seconds
        return start, self.pause_ends_at

    async def pause(self, seconds: float) -> float:
        self.pause_ends_at = max(self.pause_ends_at, time.monotonic() + seconds)
        return self.pause_ends_at

    async def paused_until(self) -> float:
        return self.pause_ends_at


class DatabaseClock:
    """Places times of the database's clock on this process's monotonic clock.

    Every round trip gives an estimate of the offset, taking the database to have read its clock halfway
    through. A reply read late (this process was busy) gives a poor estimate, so the estimate of the
    fastest round trip is kept; that round trip counts as slightly slower as it ages (:data:`CLOCK_AGING`),
    so newer estimates take over and a drift between the clocks is followed.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.round_trip = math.inf
        self.measured_at = -math.inf
        self.observations = 0

    def observe(self, database_now: float, sent: float, received: float) -> None:
        """Learn from one round trip: ``database_now`` was read between ``sent`` and ``received`` (monotonic)."""
        self.observations += 1
        aged = self.round_trip + (received - self.measured_at) * CLOCK_AGING
        if received - sent <= aged:
            self.offset = database_now - (sent + received) / 2
            self.round_trip, self.measured_at = received - sent, received

    def local(self, database_time: float) -> float:
        """``database_time`` on this process's monotonic clock."""
        return database_time - self.offset


DatabaseQuery = Callable[[AsyncConnection], Awaitable[tuple[float, ...]]]
"""A statement of :mod:`gateway.db.pacing`: times of the database's clock, its "now" last."""


class SharedTimeline(Timeline):
    """A provider's timeline in the database, shared by every process on it (PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, provider: str) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.provider = provider
        self.clock = DatabaseClock()

    async def reserve(self, seconds: float) -> tuple[float, float]:
        start, pause_ends = await self._ask(lambda connection: pacing_db.reserve(connection, self.provider, seconds))
        return start, pause_ends

    async def pause(self, seconds: float) -> float:
        (pause_ends,) = await self._ask(lambda connection: pacing_db.pause(connection, self.provider, seconds))
        return pause_ends

    async def paused_until(self) -> float:
        (pause_ends,) = await self._ask(lambda connection: pacing_db.paused_until(connection, self.provider))
        return pause_ends

    async def _ask(self, query: DatabaseQuery) -> list[float]:
        """Run ``query``, first reading the database's clock until :data:`CLOCK_PROBES` round trips were seen
        (once per process); its times, on this process's clock."""
        async with self.engine.connect() as connection:
            while self.clock.observations < CLOCK_PROBES:
                await self._timed(connection, pacing_db.clock)
            return await self._timed(connection, query)

    async def _timed(self, connection: AsyncConnection, query: DatabaseQuery) -> list[float]:
        """Run ``query`` (its last value is the database's "now"), learning the clock from its round trip."""
        sent = time.monotonic()
        *times, now = await query(connection)
        self.clock.observe(now, sent, time.monotonic())
        return [self.clock.local(value) for value in times]


class PacedLimiter:
    """A provider's limits for the requests of this process, paced on a local or shared :class:`Timeline`."""

    def __init__(self, provider: str, limits: ProviderLimits, timeline: Timeline, slots: Slots | None = None) -> None:
        self.provider = provider
        self.pace = Pace.of(limits)
        self.timeline = timeline
        self.slots = slots or LocalSlots(limits.max_concurrency)
        self._stretches: deque[list[float]] = deque()
        """Reserved stretches not handed out yet, oldest first: ``[next free, end]``."""
        self._demand = 0.0
        """Seconds of timeline the requests waiting for a stretch need."""
        self._used = 0.0
        self._used_at = 0.0
        self._lock = asyncio.Lock()
        self._pause_lock = asyncio.Lock()
        self._pause_ends_at = 0.0
        self._pause_read_at = -math.inf
        self._requested_at = -math.inf
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        """Wait for one of ``max_concurrency`` slots, then for the request's moment; hold the slot while it runs."""
        async with self.slots.hold() as held:
            await self.acquire(estimated_tokens)
            await held.confirm()  # the wait for the moment may have outlived the share (a frozen process)
            yield

    async def acquire(self, estimated_tokens: int = 0) -> None:
        """Return when one request of ``estimated_tokens`` may leave now (no concurrency slot taken)."""
        cost = self.pace.cost(estimated_tokens)
        max_late = min(MAX_LATE_S, max(cost / 2, MIN_LATE_S))
        self._watch_pause()
        late_once = False
        while True:
            if cost > 0:
                at = await self._assign(cost, max_late / 2)
                if (delay := at - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() - at > max_late and not late_once:
                    late_once = True  # once only: a process that is always late must still send
                    continue
            if cost == 0:
                await self._read_pause()  # nothing is paced: no schedule to keep, the reading may delay the request
            if (paused := self._pause_ends_at - time.monotonic()) <= 0:
                return
            if cost == 0:
                await asyncio.sleep(paused)
            # Else the stretch lies in a pause learned after it was handed out: give it up, queue again.

    def paused_for(self) -> float:
        """Seconds until the provider's last 429 pause, as this process knows it, ends (0: not paused)."""
        return max(0.0, self._pause_ends_at - time.monotonic())

    async def rate_limited(self, retry_after_s: float | None) -> None:
        """The provider answered 429: pause every request to it, in every process sharing the timeline."""
        seconds = min(retry_after_s or DEFAULT_RATE_LIMIT_PAUSE_S, MAX_PAUSE_S)
        ends_at = await self.timeline.pause(seconds)
        if ends_at > self._pause_ends_at + _SLACK_S:
            log.warning("provider %s asked to slow down: its requests wait %.1fs", self.provider, seconds)
        self._saw_pause(ends_at)

    async def _assign(self, cost: float, past: float) -> float:
        """The moment a request of ``cost`` seconds may leave: a stretch of one this process reserved, not
        before ``past`` seconds ago (a stretch may start while its reservation is on the way)."""
        self._demand += cost
        try:
            async with self._lock:
                while (at := self._take(cost, past)) is None:
                    # What the requests waiting now need, or what this process used in the last CHUNK_S,
                    # in whole requests of this one's cost (a remainder shorter than a request is lost).
                    wanted = min(max(self._demand, self._use_rate() * CHUNK_S), CHUNK_S)
                    seconds = max(1, round(wanted / cost)) * cost
                    start, pause_ends_at = await self.timeline.reserve(seconds)
                    self._saw_pause(pause_ends_at)
                    self._stretches.append([start, start + seconds])
                self._note_use(cost)
                return at
        finally:
            self._demand -= cost

    def _use_rate(self) -> float:
        """Seconds of timeline this process hands out per second, averaged over about USE_WINDOW_S."""
        return self._used * math.exp((self._used_at - time.monotonic()) / USE_WINDOW_S)

    def _note_use(self, cost: float) -> None:
        self._used = self._use_rate() + cost / USE_WINDOW_S
        self._used_at = time.monotonic()

    def _take(self, cost: float, past: float) -> float | None:
        """Hand out the next ``cost`` seconds of reserved stretches, not inside the pause nor more than
        ``past`` seconds before now."""
        earliest = max(time.monotonic() - past, self._pause_ends_at)
        while self._stretches:
            stretch = self._stretches[0]
            at = max(stretch[0], earliest)
            if at + cost <= stretch[1] + _SLACK_S:
                stretch[0] = at + cost
                return at
            self._stretches.popleft()  # what is left of it is too short, past or paused: lost
        return None

    def _watch_pause(self) -> None:
        """Keep the shared pause fresh in the background while requests come, so that none waits for a reading."""
        self._requested_at = time.monotonic()
        if self.timeline.in_process or (self._watcher is not None and not self._watcher.done()):
            return
        self._watcher = asyncio.create_task(self._read_pauses(), name=f"pause of {self.provider}")

    async def _read_pauses(self) -> None:
        """Read the pause every PAUSE_FRESH_S until no request came for WATCH_IDLE_S."""
        while time.monotonic() - self._requested_at < WATCH_IDLE_S:
            try:
                self._saw_pause(await self.timeline.paused_until())
            except Exception as exc:  # the next reading may succeed; meanwhile reservations still carry the pause
                log.warning("provider %s: reading its shared 429 pause failed: %s", self.provider, exc)
            await asyncio.sleep(PAUSE_FRESH_S)

    async def _read_pause(self) -> None:
        """Learn of a pause another process set, when the last reading is older than :data:`PAUSE_FRESH_S`."""
        if time.monotonic() - self._pause_read_at < PAUSE_FRESH_S:
            return
        async with self._pause_lock:
            if time.monotonic() - self._pause_read_at < PAUSE_FRESH_S:
                return
            self._saw_pause(await self.timeline.paused_until())

    async def close(self) -> None:
        """Give up what this process holds of the provider's limits (it is stopping)."""
        await self.slots.close()

    def _saw_pause(self, ends_at: float) -> None:
        self._pause_ends_at = max(self._pause_ends_at, ends_at)
        self._pause_read_at = time.monotonic()


def local_limiter(provider: str, limits: ProviderLimits) -> PacedLimiter:
    """Limits kept in this process only (one node; and an adapter no engine handed a limiter)."""
    return PacedLimiter(provider, limits, LocalTimeline())


def limiter_for(provider: str, limits: ProviderLimits, engine: AsyncEngine) -> PacedLimiter:
    """A provider's limiter: shared through the database on PostgreSQL, kept in this process on SQLite."""
    if engine.dialect.name == "postgresql":
        slots = SharedSlots(engine, provider, limits.max_concurrency)
        return PacedLimiter(provider, limits, SharedTimeline(engine, provider), slots)
    return local_limiter(provider, limits)


def hand_limiters(adapters: Iterable[ProviderAdapter], engine: AsyncEngine) -> None:
    """Give every adapter that paces its requests the limiter of its provider on this database."""
    for adapter in adapters:
        if isinstance(adapter, Paced):
            adapter.use_limiter(limiter_for(adapter.name, adapter.config.limits, engine))


async def release_limiters(adapters: Iterable[ProviderAdapter]) -> None:
    """Give up what this process holds of every provider's limits (see :func:`hand_limiters`), as it stops."""
    for adapter in adapters:
        if isinstance(adapter, Paced) and isinstance(adapter.limiter, PacedLimiter):
            await adapter.limiter.close()
