"""A provider's max_concurrency shared by every process on PostgreSQL: the shares never add up to more than the
limit, follow demand, and a process that stops renewing (frozen) loses its share when its lease ends.

Each :class:`SharedSlots` gets an engine of its own, as separate processes would have.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_engine
from gateway.db.pacing import fair_share
from gateway.routing.slots import LocalSlots, SharedSlots

SHARED = pytest.mark.database("postgresql", reason="slots are shared between processes on PostgreSQL only")


Make = Callable[..., SharedSlots]


@pytest.fixture
async def shared(database: str, request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """``shared(limit, lease_s=...)``: slots of the test's own provider on an engine of its own (one per process)."""
    made: list[tuple[SharedSlots, AsyncEngine]] = []
    provider = request.node.name[:120]

    def make(limit: int, **kwargs: float) -> SharedSlots:
        engine = create_engine(database)
        made.append((SharedSlots(engine, provider, limit, holder=f"process-{len(made)}", **kwargs), engine))
        return made[-1][0]

    yield make
    for slots, engine in made:
        await slots.close()
        await engine.dispose()


class InFlight:
    """Requests in flight across every process, and the most seen at once."""

    def __init__(self) -> None:
        self.now = self.most = self.done = 0

    async def request(self, slots: SharedSlots | LocalSlots, seconds: float, moment_s: float = 0.0) -> None:
        async with slots.hold() as held:
            await asyncio.sleep(moment_s)  # the wait for the request's moment (pacing), holding the slot
            await held.confirm()  # as the limiter does right before a request leaves
            self.now += 1
            self.most = max(self.most, self.now)
            await asyncio.sleep(seconds)
            self.now -= 1
            self.done += 1


@pytest.mark.parametrize(
    ("limit", "wants", "shares"),
    [
        (4, {"a": 4, "b": 4}, {"a": 2, "b": 2}),
        (4, {"a": 1, "b": 9}, {"a": 1, "b": 3}),
        (10, {"a": 2, "b": 3}, {"a": 2, "b": 3}),
        (4, {"a": 0, "b": 9}, {"a": 0, "b": 4}),
    ],
)
def test_fair_shares_fill_the_smaller_wants_first(limit: int, wants: dict[str, int], shares: dict[str, int]) -> None:
    for turn in range(5):
        assert {holder: fair_share(limit, wants, holder, turn) for holder in wants} == shares


@pytest.mark.parametrize(("limit", "holders"), [(5, 2), (3, 4), (1, 3)])
def test_a_slot_the_division_leaves_over_goes_round_the_holders_turn_by_turn(limit: int, holders: int) -> None:
    wants = {f"process-{n}": 9 for n in range(holders)}
    given: dict[str, set[int]] = {holder: set() for holder in wants}
    for turn in range(40):
        shares = {holder: fair_share(limit, wants, holder, turn) for holder in wants}
        assert sum(shares.values()) == limit
        assert max(shares.values()) - min(shares.values()) <= 1
        for holder, share in shares.items():
            given[holder].add(share)
    # Every holder got the larger share in some turn: none is left out for good.
    larger = limit // holders + 1
    assert all(larger in shares for shares in given.values()), given


async def test_local_slots_keep_this_process_to_the_limit() -> None:
    slots, flight = LocalSlots(3), InFlight()
    await asyncio.gather(*(flight.request(slots, 0.01) for _ in range(20)))
    assert (flight.most, flight.done) == (3, 20)


@SHARED
async def test_processes_together_never_have_more_in_flight_than_the_limit(shared: Make) -> None:
    processes, flight = [shared(4) for _ in range(3)], InFlight()
    started = time.monotonic()
    # Each request holds its slot a while before it is sent, as paced requests do. The first process takes every
    # slot before the others arrive; its share then shrinks under requests holding slots and not sent yet, which
    # wait rather than exceed the limit (or hang). A request stays in flight 0.15 s, long enough for the shares'
    # four to overlap on a loaded machine (at 0.05 s a loaded run once saw no more than three at once).
    first = [asyncio.create_task(flight.request(processes[0], 0.15, moment_s=0.3)) for _ in range(20)]
    await asyncio.sleep(0.1)
    rest = [flight.request(slots, 0.15, moment_s=0.02) for slots in processes[1:] for _ in range(20)]
    await asyncio.wait_for(asyncio.gather(*first, *rest), timeout=30)
    assert flight.done == 60
    assert flight.most <= 4, f"{flight.most} requests in flight at once, limit 4"
    # Not merely safe: the limit was used.
    assert flight.most == 4 and time.monotonic() - started < 15.0


@SHARED
async def test_a_lone_process_takes_the_whole_limit_and_gives_it_back_when_idle(
    shared: Make, database: str, request: pytest.FixtureRequest
) -> None:
    first, second = shared(4), shared(4)
    flight = InFlight()
    await asyncio.gather(*(flight.request(first, 0.05) for _ in range(12)))
    assert flight.most == 4, "one process alone may use every slot"
    await asyncio.sleep(1.5)  # idle past IDLE_S: its share is given up
    engine = create_engine(database)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT count(*) FROM provider_slots WHERE provider = :p"), {"p": request.node.name[:120]}
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert rows == 0
    flight = InFlight()
    await asyncio.gather(*(flight.request(second, 0.05) for _ in range(8)))
    assert flight.most == 4


@SHARED
async def test_a_process_that_stops_renewing_loses_its_share_when_its_lease_ends(shared: Make) -> None:
    frozen, other = shared(4, lease_s=1.0), shared(4, lease_s=1.0)
    release = asyncio.Event()

    async def held() -> None:
        async with frozen.hold() as slot:
            await slot.confirm()
            await release.wait()

    holders = [asyncio.create_task(held()) for _ in range(4)]
    while frozen.sent < 4:
        await asyncio.sleep(0.01)
    assert frozen._keeper is not None
    frozen._keeper.cancel()  # as a frozen process: no more renewals, its requests still out
    stopped = time.monotonic()
    flight = InFlight()
    await asyncio.wait_for(flight.request(other, 0.0), timeout=10)
    waited = time.monotonic() - stopped
    # The other process waited for the lease (1 s, from the frozen one's last claim) rather than exceed the limit.
    assert 0.5 < waited < 5.0, waited
    # Woken, the frozen process sends nothing more until it has claimed again: its lease ran out.
    assert time.monotonic() >= frozen.valid_until and not frozen._may_go()
    release.set()
    await asyncio.gather(*holders)


@SHARED
async def test_a_process_frozen_inside_a_claim_holds_the_others_up_only_until_the_server_ends_its_session(
    database: str, shared: Make, request: pytest.FixtureRequest
) -> None:
    # A process frozen (SIGSTOP) in the middle of a claim keeps the claim's transaction, and the provider's advisory
    # lock with it, open: without the server's idle-transaction timeout every other claim would wait until it woke.
    provider = request.node.name[:120]
    frozen = create_engine(database, idle_transaction_timeout_s=1.5)
    try:
        async with frozen.connect() as connection:
            await connection.begin()
            lock = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
            await connection.execute(lock, {"key": "batchgw-slots:" + provider})
            other = shared(2)
            started = time.monotonic()
            await asyncio.wait_for(InFlight().request(other, 0.0), timeout=15)
            waited = time.monotonic() - started
            assert 1.0 < waited < 10.0, waited  # held up while the lock was held, not for good
            with pytest.raises(Exception, match=r"idle-in-transaction timeout|terminat|closed"):
                await connection.execute(text("SELECT 1"))  # the frozen session was ended by the server
    finally:
        await frozen.dispose()
