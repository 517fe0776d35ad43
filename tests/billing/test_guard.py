"""Hard budgets that hold, on a real database: projections that follow reality, stops of a batch whose growth
does not fit, pauses when a scope is spent, re-priced moves, and fan-out answers counted as they arrive."""

from __future__ import annotations

import pytest

from gateway.billing import guard
from gateway.billing.budgets import set_budget
from gateway.db import billing as db
from gateway.db.models import Batch, Shard
from gateway.settings import BillingSettings
from tests.billing.conftest import Seeder

SETTINGS = BillingSettings()


async def overrun(seed: Seeder, team: str, *, ratio: float = 3.0) -> str:
    """A batch estimated at $1.00 in two shards of $0.50: the first ran and cost ``ratio`` times its estimate."""
    batch = await seed.batch(team, estimated=1.0, cost=0.5 * ratio, request_total=20)
    done = await seed.shard(batch, seq=0, state="done", estimated=0.5, completed=10)
    await seed.shard(batch, seq=1, state="queued", estimated=0.5)
    await seed.spend(team, batch, 0.5 * ratio, shard_id=done)
    return batch


async def load(seed: Seeder, batch_id: str) -> Batch:
    async with seed.sessions() as session:
        found = await db.get_batch(session, batch_id)
        assert found is not None
        return found


async def test_the_reservation_follows_reality(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await overrun(seed, acme, ratio=3.0)
    async with seed.sessions() as session:
        assert await db.reserved(session, acme) == 0  # by its estimate, $1.00, it has spent more than it reserved
        projection, stopped = await guard.after_spend(session, await db.get_batch(session, batch), SETTINGS)
        await session.commit()
    assert stopped is None  # no hard budget
    assert (projection.actual_usd, projection.ratio, projection.rest_usd) == pytest.approx((1.5, 3.0, 1.5))
    assert projection.expected_usd == pytest.approx(3.0)
    assert "the rest projected at 3.0x its estimate from 10 answered requests" in projection.describe()
    async with seed.sessions() as session:
        assert await db.reserved(session, acme) == pytest.approx(1.5)  # the second shard, at the same overrun
        assert (await db.get_batch(session, batch)).projected_cost_usd == pytest.approx(3.0)  # type: ignore[union-attr]


async def test_a_batch_whose_growth_does_not_fit_is_stopped_with_the_figures(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await overrun(seed, acme, ratio=3.0)
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 2.5, True, [])
        await session.commit()
        _, alert = await guard.after_spend(session, await db.get_batch(session, batch), SETTINGS)
        await session.commit()
    assert alert is not None and alert.kind == "budget_stop" and alert.batch_id == batch
    stopped = await load(seed, batch)
    assert (stopped.status, stopped.hold_reason) == ("cancelling", "budget")
    [error] = stopped.errors or []
    assert error["code"] == "budget_exceeded"
    for part in ("is now expected to cost $3.00", "$1.50 spent", "daily budget of team 'acme' of $2.50",
                 "leave $1.00 for the $1.50 it still needs"):  # fmt: skip
        assert part in error["message"], error["message"]
    async with seed.sessions() as session:  # stopping twice raises nothing more
        assert (await guard.after_spend(session, await db.get_batch(session, batch), SETTINGS))[1] is None


async def test_a_soft_budget_or_enough_room_never_stops(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await overrun(seed, acme, ratio=3.0)
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 2.5, False, [])
        await set_budget(session, None, "month", 3.0, True, [])  # exactly fits
        await session.commit()
        _, alert = await guard.after_spend(session, await db.get_batch(session, batch), SETTINGS)
        await session.commit()
    assert alert is None and (await load(seed, batch)).status == "in_progress"


async def test_a_spent_scope_pauses_work_that_stays_within_its_reservation(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await overrun(seed, acme, ratio=1.0)  # ran at its estimate: $0.50 spent, $0.50 to go
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 0.75, True, [])  # lowered below what the batch reserved
        await session.commit()
        current = await db.get_batch(session, batch)
        assert current is not None
        _, alert = await guard.after_spend(session, current, SETTINGS)
        assert alert is None  # it did not grow: not its fault, it is not stopped
        assert (await guard.running_check(session, current, SETTINGS)).action == "go"  # $0.25 of room left
        await set_budget(session, acme, "day", 0.5, True, [])  # now spent
        check = await guard.running_check(session, current, SETTINGS)
        assert check.action == "pause" and "is spent ($0.5000 this day)" in check.message
        await session.commit()
    assert (await load(seed, batch)).status == "in_progress"


async def test_fan_out_answers_count_before_they_reach_the_ledger(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await seed.batch(acme, estimated=1.0, request_total=20)
    shard_id = await seed.shard(batch, seq=0, state="executing", estimated=1.0, requests=20)
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 2.0, True, [])
        await session.commit()
        current = await db.get_batch(session, batch)
        shard = await session.get(Shard, shard_id)
        assert current is not None and shard is not None
        cheap = guard.Live(shard, answered=10, cost_usd=0.5)  # at its estimate
        assert (await guard.running_check(session, current, SETTINGS, live=cheap)).action == "go"
        rambling = guard.Live(shard, answered=5, cost_usd=1.0)  # 4x: $4.00 projected
        check = await guard.running_check(session, current, SETTINGS, live=rambling)
        assert check.action == "stop" and "4.0x its estimate from 5 answered requests" in check.message
        await session.commit()
    async with seed.sessions() as session:
        other = await seed.batch(acme, estimated=0.1)
        spent = guard.Live(shard, answered=19, cost_usd=2.0)  # the answers alone reach the limit
        check = await guard.running_check(session, await db.get_batch(session, other), SETTINGS, live=spent)  # type: ignore[arg-type]
        assert check.action == "pause"


async def test_a_move_is_priced_at_the_new_offer_and_must_fit(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await seed.batch(acme, estimated=1.0, request_total=20)
    await seed.shard(batch, seq=0, state="collecting", estimated=1.0, requests=20)
    async with seed.sessions() as session:
        current = await db.get_batch(session, batch)
        assert current is not None
        assert await guard.move_fits(session, current, 0.5, 3.35) is None  # no hard budget
        await set_budget(session, acme, "day", 2.0, True, [])
        await session.commit()
        assert await guard.move_fits(session, current, 0.5, 0.4) is None  # cheaper: fits
        refusal = await guard.move_fits(session, current, 0.5, 3.35)  # 6.7x the price
        assert refusal is not None and "is now expected to cost $3.85" in refusal
