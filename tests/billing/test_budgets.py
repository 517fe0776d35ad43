"""Budget arithmetic on a real database: spent, reserved, refusal at create, reservation, pause."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from gateway.billing.budgets import period_bounds, refuse_new_batch, reserve, set_budget, team_paused, usd
from gateway.db import billing as db
from tests.billing.conftest import Seeder


def _ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_period_bounds_are_utc_calendar_periods() -> None:
    moment = _ts(2026, 12, 31, 23, 59, 59)
    assert period_bounds("day", moment) == (_ts(2026, 12, 31), _ts(2027, 1, 1))
    assert period_bounds("month", moment) == (_ts(2026, 12, 1), _ts(2027, 1, 1))
    assert period_bounds("month", _ts(2028, 2, 29, 12)) == (_ts(2028, 2, 1), _ts(2028, 3, 1))
    with pytest.raises(ValueError, match="week"):
        period_bounds("week", moment)


async def test_refuse_new_batch_names_the_exhausted_hard_budget(seed: Seeder) -> None:
    acme = await seed.team("acme")
    other = await seed.team("other")
    batch = await seed.batch(acme, estimated=3.0, cost=1.0)
    await seed.spend(acme, batch, 6.0)
    await seed.spend(acme, batch, 100.0, at=_ts(2020, 1, 1))  # an earlier period does not count
    async with seed.sessions() as session:
        assert await refuse_new_batch(session, acme) is None  # no budget at all
        await set_budget(session, acme, "day", 8.0, False, [])
        await session.commit()
        assert await refuse_new_batch(session, acme) is None  # soft budgets never refuse
        await set_budget(session, acme, "day", 8.0, True, [])
        await session.commit()
        # spent 6 + reserved (3 estimated - 1 spent) = 8 >= 8
        message = await refuse_new_batch(session, acme)
        assert message is not None
        for part in ("daily budget of team 'acme'", "$8.00", "$6.00 spent", "$2.00 reserved"):
            assert part in message
        assert await refuse_new_batch(session, other) is None
        await set_budget(session, acme, "day", 8.5, True, [])
        await session.commit()
        assert await refuse_new_batch(session, acme) is None


async def test_global_hard_budget_counts_every_team(seed: Seeder) -> None:
    acme = await seed.team("acme")
    other = await seed.team("other")
    await seed.spend(acme, await seed.batch(acme, status="completed"), 4.0)
    await seed.spend(other, await seed.batch(other, status="completed"), 7.0)
    async with seed.sessions() as session:
        await set_budget(session, None, "month", 10.0, True, [])
        await session.commit()
        for team in (acme, other):
            message = await refuse_new_batch(session, team)
            assert message is not None and "monthly global budget" in message and "$11.00 spent" in message


async def test_reserved_is_released_as_spend_lands_and_when_batches_end(seed: Seeder) -> None:
    acme = await seed.team("acme")
    await seed.batch(acme, estimated=5.0, cost=2.0)
    await seed.batch(acme, status="validating", estimated=1.0)
    await seed.batch(acme, estimated=1.0, cost=3.0)  # already over its estimate: reserves nothing
    await seed.batch(acme, status="completed", estimated=50.0)
    await seed.batch(acme, status="cancelled", estimated=50.0)
    async with seed.sessions() as session:
        assert await db.reserved(session, acme) == pytest.approx(4.0)
        assert await db.reserved(session, None) == pytest.approx(4.0)


async def test_reserve_sets_the_estimate_or_refuses_with_the_figures(seed: Seeder) -> None:
    acme = await seed.team("acme")
    first = await seed.batch(acme)
    second = await seed.batch(acme)
    await seed.spend(acme, await seed.batch(acme, status="completed"), 2.0)
    async with seed.sessions() as session:
        await set_budget(session, acme, "month", 10.0, True, [])
        await session.commit()
    async with seed.sessions() as session:
        assert await reserve(session, acme, first, 5.0) is None
        await session.commit()
    async with seed.sessions() as session:
        message = await reserve(session, acme, second, 3.5)
        assert message is not None
        for part in (
            second,
            "$3.50",
            "monthly budget of team 'acme'",
            "$10.00",
            "$2.00 spent",
            "$5.00 reserved",
            "leave $3.00",
        ):
            assert part in message
        await session.rollback()
        assert (await db.get_batch(session, second)).estimated_cost_usd is None  # type: ignore[union-attr]
        assert await reserve(session, acme, second, 3.0) is None  # exactly fits
        await session.commit()
        assert (await db.get_batch(session, second)).estimated_cost_usd == 3.0  # type: ignore[union-attr]
        # Re-reserving a batch does not count its own earlier reservation against it.
        assert await reserve(session, acme, first, 5.0) is None


async def test_concurrent_reservations_cannot_jointly_overshoot(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batches = [await seed.batch(acme), await seed.batch(acme)]
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 10.0, True, [])
        await session.commit()

    async def attempt(batch_id: str, hold_s: float) -> str | None:
        async with seed.sessions() as session:
            refusal = await reserve(session, acme, batch_id, 6.0)
            await asyncio.sleep(hold_s)  # the other caller runs while this transaction is open
            await session.commit()
            return refusal

    results = await asyncio.gather(attempt(batches[0], 0.5), attempt(batches[1], 0.0))
    assert sorted(r is None for r in results) == [False, True], results
    async with seed.sessions() as session:
        assert await db.reserved(session, acme) == pytest.approx(6.0)


async def test_team_paused_while_hard_budget_spent_and_resumed_by_raising_it(seed: Seeder) -> None:
    acme = await seed.team("acme")
    await seed.batch(acme, estimated=100.0)  # reservations do not pause, only actual spend
    await seed.spend(acme, await seed.batch(acme, status="completed"), 9.0)
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 10.0, True, [])
        await session.commit()
        assert await team_paused(session, acme) is None
    await seed.spend(acme, await seed.batch(acme, status="completed"), 1.0)
    async with seed.sessions() as session:
        message = await team_paused(session, acme)
        assert message is not None and "daily budget of team 'acme'" in message and "$10.00" in message
        await set_budget(session, acme, "day", 20.0, True, [])
        await session.commit()
        assert await team_paused(session, acme) is None
        await set_budget(session, acme, "day", 5.0, False, [])  # a soft budget never pauses
        await session.commit()
        assert await team_paused(session, acme) is None


def test_amounts_in_messages_keep_two_significant_digits_and_their_sign() -> None:
    assert (usd(12.345), usd(0.5), usd(0), usd(0.00123)) == ("$12.35", "$0.5000", "$0.00", "$0.0012")
    assert usd(1.73e-5) == "$0.000017"  # a request's cost, not "$0.0000"
    assert (usd(-0.006), usd(-2.5)) == ("-$0.0060", "-$2.50")
