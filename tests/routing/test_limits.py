"""Provider limiters on real databases: burst-free pacing, chunks of several processes summing within
the limit, and the 429 pause reaching every process.

Each limiter instance of the shared kind gets an engine of its own, as separate processes would have.
Times are this process's monotonic clock at the moment a permit was given (when the request would leave).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from gateway.context import GatewayContext
from gateway.db import routing as routing_db
from gateway.db.engine import create_engine
from gateway.providers.config import ProviderConfig, ProviderLimits
from gateway.providers.openai_sync import OpenAISyncAdapter
from gateway.routing.limits import (
    CLOCK_PROBES,
    MAX_LATE_S,
    PAUSE_FRESH_S,
    LocalTimeline,
    PacedLimiter,
    SharedTimeline,
    limiter_for,
    local_limiter,
)
from gateway.settings import Settings

Limiters = Callable[..., PacedLimiter]


@pytest.fixture
async def limiters(database: str, request: pytest.FixtureRequest) -> AsyncIterator[Limiters]:
    """``limiters(**limits)``: a limiter of the test's own provider on an engine of its own (one per process)."""
    engines: list[AsyncEngine] = []
    provider = request.node.name[:120]  # tests sharing the database share no timeline

    def make(**limits: int) -> PacedLimiter:
        engines.append(create_engine(database))
        return limiter_for(provider, ProviderLimits(**limits), engines[-1])

    yield make
    for engine in engines:
        await engine.dispose()


async def take_permits(limiter: PacedLimiter, seconds: float, callers: int = 16, tokens: int = 0) -> list[float]:
    """``callers`` tasks take permits one after another for ``seconds``; the moment of every permit."""
    stamps: list[float] = []

    async def caller() -> None:
        while True:
            await limiter.acquire(tokens)
            stamps.append(time.monotonic())

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sorted(stamps)


def busiest(stamps: list[float], window: float = 1.0) -> int:
    """The most permits in any window of ``window`` seconds."""
    stamps = sorted(stamps)
    most, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamps[first] <= stamp - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def per_second(rpm: int) -> int:
    """The most requests a smooth limiter of ``rpm`` lets into one second (give or take one)."""
    return math.ceil(rpm / 60) + 1


def late_allowance(rpm: int) -> int:
    """Slack for a busy test machine: a request late a second time still leaves (so that a process always
    that late is not starved), and sixty-four callers share one event loop here."""
    return math.ceil(rpm / 60 * MAX_LATE_S)


def round_trips(paced: PacedLimiter) -> Callable[[], int]:
    """Counts the reservations the limiter's shared timeline makes in the database from now on."""
    assert isinstance(paced.timeline, SharedTimeline)
    count = 0

    def counted(*args: object) -> None:
        nonlocal count
        count += "provider_pacing" in str(args[2])

    event.listen(paced.timeline.engine.sync_engine, "before_cursor_execute", counted)
    return lambda: count


# --- both kinds (in-process on SQLite, shared on PostgreSQL) -----------------------------------------------


def test_the_database_chooses_the_kind(limiters: Limiters, database_kind: str) -> None:
    timeline = limiters(requests_per_minute=60).timeline
    expected = SharedTimeline if database_kind == "postgresql" else LocalTimeline
    assert type(timeline) is expected


async def test_the_engine_hands_its_limiter_to_synchronous_adapters(database: str, tmp_path: Path) -> None:
    providers = {
        "sync": ProviderConfig(kind="openai_sync", base_url="http://127.0.0.1:9/v1", models=["m"]),
        "batch": ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1", models=["m"]),
    }
    context = GatewayContext.create(Settings(data_dir=tmp_path, database_url=database, providers=providers))
    try:
        adapter = context.providers.get("sync")
        assert isinstance(adapter, OpenAISyncAdapter) and isinstance(adapter.limiter, PacedLimiter)
        expected = SharedTimeline if context.engine.dialect.name == "postgresql" else LocalTimeline
        assert type(adapter.limiter.timeline) is expected
    finally:
        await context.close()


async def test_no_burst_at_start_and_the_rate_is_reached(limiters: Limiters) -> None:
    rpm = 600
    paced = limiters(requests_per_minute=rpm)
    started = time.monotonic()
    stamps = await take_permits(paced, 2.5, callers=30)
    # Thirty callers at once, yet the first second holds one second's worth, not thirty.
    assert sum(1 for t in stamps if t < started + 1.0) <= per_second(rpm)
    assert busiest(stamps) <= per_second(rpm)
    # Smooth, not merely slow: the configured rate is what comes through (once the first permit came).
    assert sum(1 for t in stamps if t < stamps[0] + 1.5) >= 0.75 * 1.5 * rpm / 60


async def test_no_burst_after_an_idle_spell(limiters: Limiters) -> None:
    rpm = 600
    paced = limiters(requests_per_minute=rpm)
    await take_permits(paced, 0.5, callers=4)
    await asyncio.sleep(1.2)  # idle: unused time is not saved up for a burst
    resumed = time.monotonic()
    stamps = await take_permits(paced, 1.2, callers=30)
    assert sum(1 for t in stamps if t < resumed + 1.0) <= per_second(rpm)
    assert busiest(stamps) <= per_second(rpm)


async def test_tokens_per_minute_paces_by_each_requests_tokens(limiters: Limiters) -> None:
    # 6,000 tokens a minute is 100 a second: requests of 50 tokens go two a second although 600 rpm allows ten.
    paced = limiters(requests_per_minute=600, tokens_per_minute=6000)
    stamps = await take_permits(paced, 2.5, callers=8, tokens=50)
    assert busiest(stamps) <= 3
    assert 4 <= len(stamps) <= 6


async def test_concurrency_is_bounded_in_the_process(limiters: Limiters) -> None:
    paced = limiters(max_concurrency=3)
    running = most = 0

    async def request() -> None:
        nonlocal running, most
        async with paced.slot(10):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.05)
            running -= 1

    await asyncio.gather(*(request() for _ in range(12)))
    assert most == 3


async def test_a_429_pauses_every_request_of_the_limiter(limiters: Limiters) -> None:
    paced = limiters(requests_per_minute=1200)
    stamps: list[float] = []

    async def pause_soon() -> tuple[float, float]:
        await asyncio.sleep(0.5)
        asked = time.monotonic()
        await paced.rate_limited(1.0)
        return asked, time.monotonic()

    stamps_task = asyncio.create_task(take_permits(paced, 3.0, callers=8))
    asked, told = await pause_soon()
    stamps = await stamps_task
    # Nothing leaves during the pause (a permit given just before it was set may still go out).
    assert not [t for t in stamps if told + 0.05 < t < asked + 1.0]
    after = [t for t in stamps if t >= asked + 1.0]
    assert after and after[0] < asked + 1.3, "requests resumed late"
    assert busiest(after) <= per_second(1200), "the end of the pause let a burst through"


# --- shared between processes (PostgreSQL) -----------------------------------------------------------------


@pytest.fixture
def shared(database_kind: str) -> None:
    if database_kind != "postgresql":
        pytest.skip("limits are shared between processes on PostgreSQL only")


@pytest.mark.usefixtures("shared")
async def test_chunks_of_several_processes_sum_within_the_limit(limiters: Limiters) -> None:
    rpm = 12_000  # 200 a second, 50 for each process: about 5 permits to a round trip
    processes = [limiters(requests_per_minute=rpm) for _ in range(4)]
    trips = [round_trips(paced) for paced in processes]
    seconds = 3.0
    started = time.monotonic()
    results = await asyncio.gather(*(take_permits(paced, seconds, callers=16) for paced in processes))
    stamps = sorted(t for result in results for t in result)
    assert all(len(result) >= 0.1 * len(stamps) for result in results), [len(r) for r in results]
    # Chunks, not a round trip a permit. A process starved of CPU loses moments of the chunks it reserved (two
    # permits a round trip were seen with four test processes on two cores), hence the margin.
    assert sum(count() for count in trips) <= 0.75 * len(stamps), "permits should come several to a round trip"
    # The sum of all processes: within the limit over the run and in every second, the first one too.
    assert len(stamps) <= seconds * rpm / 60 + 2
    assert sum(1 for t in stamps if t < started + 1.0) <= per_second(rpm) + late_allowance(rpm)
    assert busiest(stamps) <= per_second(rpm) + late_allowance(rpm)
    # A floor, not a figure: on a loaded two-core machine the database round trips slow the callers down.
    came = sum(1 for t in stamps if t < stamps[0] + 2.0)
    assert came >= 0.5 * 2.0 * rpm / 60, "the processes together fell well below the limit"


@pytest.mark.usefixtures("shared")
async def test_a_process_reads_the_database_clock_several_times_before_placing_its_first_moment(
    limiters: Limiters,
) -> None:
    timeline = limiters(requests_per_minute=600).timeline
    assert isinstance(timeline, SharedTimeline)
    await timeline.reserve(0.1)
    clock = timeline.clock
    assert clock.observations == CLOCK_PROBES + 1, "the first reservation came after the clock readings"
    # The database runs on this machine: its clock is this machine's wall clock, so the learnt offset between
    # it and this process's monotonic clock must match the one read here, within the best round trip.
    offset_here = time.time() - time.monotonic()
    assert abs(clock.offset - offset_here) <= clock.round_trip / 2 + 0.005, (clock.offset, offset_here)
    await timeline.reserve(0.1)
    await timeline.paused_until()
    assert clock.observations == CLOCK_PROBES + 3, "later calls read the clock once more each"


@pytest.mark.usefixtures("shared")
async def test_processes_that_come_and_go_never_add_up_to_a_burst(limiters: Limiters) -> None:
    rpm = 1200
    first, second, third = (limiters(requests_per_minute=rpm) for _ in range(3))

    # One process runs throughout; a second stops after a second and comes back; a third joins late.
    async def later(paced: PacedLimiter) -> list[float]:
        await asyncio.sleep(1.5)
        return await take_permits(paced, 1.0, callers=8)

    results = await asyncio.gather(
        take_permits(first, 3.0, callers=8),
        take_permits(second, 1.0, callers=8),
        later(second),
        later(third),
    )
    stamps = sorted(t for result in results for t in result)
    assert busiest(stamps) <= per_second(rpm)


@pytest.mark.usefixtures("shared")
async def test_a_429_in_one_process_pauses_the_others(limiters: Limiters, database: str) -> None:
    rpm = 1200
    here, elsewhere = limiters(requests_per_minute=rpm), limiters(requests_per_minute=rpm)
    pause_s = 3.0

    async def pause_soon() -> tuple[float, float]:
        await asyncio.sleep(0.6)
        await here.rate_limited(pause_s)
        return time.monotonic(), time.time()

    other = asyncio.create_task(take_permits(elsewhere, 5.0, callers=8))
    told, told_wall = await pause_soon()
    stamps = await other
    # The other process stops within PAUSE_FRESH_S (its next reading, which on a loaded two-core machine
    # running the whole suite has taken up to a second more) and resumes when the pause ends.
    during = [t for t in stamps if told + PAUSE_FRESH_S + 0.8 < t < told + pause_s - 0.05]
    assert not during, f"{len(during)} requests left the other process during the pause"
    after = [t for t in stamps if t >= told + pause_s - 0.05]
    assert after and after[0] < told + pause_s + PAUSE_FRESH_S + 0.6
    assert busiest(after) <= per_second(rpm)
    # The pause is on the provider's health row, where every process and the operator see it.
    check = create_engine(database)
    try:
        async with SQLModelAsyncSession(check) as session:
            row = (await routing_db.health_rows(session))[here.provider]
    finally:
        await check.dispose()
    assert row.rate_limited_until is not None and abs(row.rate_limited_until - (told_wall + pause_s)) < 0.5


@pytest.mark.usefixtures("shared")
async def test_a_shorter_429_never_shortens_a_pause(limiters: Limiters) -> None:
    one, two = limiters(requests_per_minute=600), limiters(requests_per_minute=600)
    started = time.monotonic()
    await one.rate_limited(5.0)
    await two.rate_limited(0.5)
    # Shortened, the pause would end 0.5 s after the second call; kept, 5 s after the first. Measured from before
    # both calls, so a loaded machine's slow round trips cannot make the kept pause look shortened.
    assert await two.timeline.paused_until() - started > 4.5


# --- an adapter with no engine keeps its limits in the process ----------------------------------------------


async def test_an_adapter_without_an_engine_paces_in_the_process() -> None:
    config = ProviderConfig(name="solo", kind="openai_sync", base_url="http://127.0.0.1:9/v1", models=["m"])
    async with httpx.AsyncClient() as http:
        adapter = OpenAISyncAdapter(config=config, http=http)
        assert isinstance(adapter.limiter, PacedLimiter) and isinstance(adapter.limiter.timeline, LocalTimeline)
        other = local_limiter("solo", config.limits)
        adapter.use_limiter(other)
        assert adapter.limiter is other
