"""Budgets: what a team (or everyone) may spend per UTC day or month, and the checks against them.

Spent is the ledger's cost in the current period. Reserved is what unfinished batches are still
expected to cost: the sum of ``max(0, expected - cost_usd)`` over the team's batches in
``validating``, ``in_progress``, ``finalizing`` or ``cancelling``, where expected is the batch's
projection (its estimate at first, then spend plus a projection of the rest: see
:mod:`gateway.billing.guard`), so a reservation follows reality as spend lands and disappears when the
batch ends. A *hard* budget refuses new batches once ``spent + reserved >= limit``, refuses a batch whose
estimate does not fit, stops a batch whose projection no longer fits, and pauses the team's work once
``spent >= limit``. The global budget applies to every team at once.

None of these functions commit: the caller commits, so a check and the state change it allows are
one transaction.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db import billing as db
from gateway.db.models import Budget

PERIODS = ("day", "month")
EPSILON = 1e-9
_ADJECTIVE = {"day": "daily", "month": "monthly"}


def usd(amount: float) -> str:
    """A dollar amount for messages: cents, four decimals below one dollar, and two significant digits below a
    hundredth of a cent (a request's cost: ``$0.000017``, not ``$0.0000``); ``-$0.0060`` below zero."""
    sign, amount = ("-", -amount) if amount < 0 else ("", amount)
    if amount >= 1 or amount == 0:
        return f"{sign}${amount:,.2f}"
    digits = 4 if amount >= 1e-4 else min(10, 1 - math.floor(math.log10(amount)))
    return f"{sign}${amount:.{digits}f}"


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """Start and end (Unix seconds) of the UTC calendar day or month holding ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}; use one of {', '.join(PERIODS)}")
    return start.timestamp(), end.timestamp()


def scope_of(team_id: str | None) -> str:
    """The stored scope of a team's budget, or of the global one (None)."""
    return f"team:{team_id}" if team_id else "global"


@dataclass(frozen=True)
class BudgetStatus:
    """A budget with its current period's figures."""

    budget: Budget
    team_name: str | None
    period_start: float
    period_end: float
    spent_usd: float
    reserved_usd: float

    @property
    def label(self) -> str:
        """For messages: "daily budget of team 'acme'" or "monthly global budget"."""
        adjective = _ADJECTIVE.get(self.budget.period, self.budget.period)
        if self.budget.team_id is None:
            return f"{adjective} global budget"
        return f"{adjective} budget of team '{self.team_name or self.budget.team_id}'"

    @property
    def utilisation(self) -> float:
        """Spent as a fraction of the limit."""
        return self.spent_usd / self.budget.limit_usd if self.budget.limit_usd > 0 else 0.0

    @property
    def exhausted(self) -> bool:
        """Actual spend reached the limit."""
        return self.spent_usd + EPSILON >= self.budget.limit_usd

    @property
    def committed_exhausted(self) -> bool:
        """Spend plus reservations reached the limit."""
        return self.spent_usd + self.reserved_usd + EPSILON >= self.budget.limit_usd

    def until(self) -> str:
        """End of the period, readable."""
        return datetime.fromtimestamp(self.period_end, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def status_of(
    session: AsyncSession,
    budget: Budget,
    team_name: str | None,
    *,
    now: float | None = None,
    exclude_batch_id: str | None = None,
) -> BudgetStatus:
    """The budget's spend and reservations in its current period."""
    start, end = period_bounds(budget.period, time.time() if now is None else now)
    return BudgetStatus(
        budget=budget,
        team_name=team_name,
        period_start=start,
        period_end=end,
        spent_usd=await db.ledger_spend(session, budget.team_id, start, end),
        reserved_usd=await db.reserved(session, budget.team_id, exclude_batch_id),
    )


async def budget_statuses(session: AsyncSession, now: float | None = None) -> list[BudgetStatus]:
    """Every budget with its current figures (the admin API and the metrics read this)."""
    return [await status_of(session, budget, name, now=now) for budget, name in await db.list_budgets(session)]


async def team_statuses(
    session: AsyncSession,
    team_id: str,
    *,
    hard_only: bool = False,
    now: float | None = None,
    exclude_batch_id: str | None = None,
) -> list[BudgetStatus]:
    """The team's own budgets and the global ones, with current figures."""
    budgets = await db.budgets_of_team(session, team_id, hard_only=hard_only)
    name = await db.team_name(session, team_id) if budgets else None
    return [await status_of(session, budget, name, now=now, exclude_batch_id=exclude_batch_id) for budget in budgets]


async def refuse_new_batch(session: AsyncSession, team_id: str) -> str | None:
    """A message naming the first hard budget of the team (or global) already used up, else None."""
    for status in await team_statuses(session, team_id, hard_only=True):
        if status.committed_exhausted:
            return (
                f"The {status.label} of {usd(status.budget.limit_usd)} is used up: {usd(status.spent_usd)} spent "
                f"and {usd(status.reserved_usd)} reserved by running batches this {status.budget.period}. "
                f"New batches are refused until the budget is raised or the period ends ({status.until()})."
            )
    return None


async def reserve(session: AsyncSession, team_id: str, batch_id: str, estimated_cost_usd: float) -> str | None:
    """Reserve the batch's estimated cost against the hard budgets, or say why it does not fit.

    Concurrent callers are serialised on the budget rows, so two batches cannot both take the
    last of a budget. On success the batch's ``estimated_cost_usd`` is set (that is the
    reservation) and None is returned.
    """
    hard = await db.budgets_of_team(session, team_id, hard_only=True)
    await db.lock_budgets(session, [b.id for b in hard if b.id is not None])
    if hard:
        name = await db.team_name(session, team_id)
        for budget in hard:
            await session.refresh(budget)
            status = await status_of(session, budget, name, exclude_batch_id=batch_id)
            committed = status.spent_usd + status.reserved_usd
            if committed + estimated_cost_usd > budget.limit_usd + EPSILON:
                left = max(0.0, budget.limit_usd - committed)
                return (
                    f"Batch {batch_id} is estimated to cost {usd(estimated_cost_usd)}, which does not fit the "
                    f"{status.label} of {usd(budget.limit_usd)}: {usd(status.spent_usd)} spent and "
                    f"{usd(status.reserved_usd)} reserved by other running batches leave {usd(left)}."
                )
    batch = await db.get_batch(session, batch_id)
    if batch is not None:
        batch.estimated_cost_usd = estimated_cost_usd
        session.add(batch)
        await session.flush()
    return None


async def team_paused(session: AsyncSession, team_id: str, *, extra_spent_usd: float = 0.0) -> str | None:
    """Why the team's work must wait (a hard budget's actual spend reached its limit), or None.

    ``extra_spent_usd`` counts spend not yet in the ledger (answers of a running fan-out shard).
    """
    for status in await team_statuses(session, team_id, hard_only=True):
        if status.spent_usd + extra_spent_usd + EPSILON >= status.budget.limit_usd:
            return (
                f"The {status.label} of {usd(status.budget.limit_usd)} is spent ({usd(status.spent_usd)} this "
                f"{status.budget.period}); queued work waits until the budget is raised or the period ends "
                f"({status.until()})."
            )
    return None


async def set_budget(
    session: AsyncSession,
    team_id: str | None,
    period: str,
    limit_usd: float,
    hard: bool,
    thresholds: list[float],
) -> Budget:
    """Create the budget of this scope and period, or replace its figures (its id and alerts stay)."""
    scope = scope_of(team_id)
    budget = await db.find_budget(session, scope, period)
    now = time.time()
    if budget is None:
        budget = Budget(scope=scope, team_id=team_id, period=period, created_at=now, limit_usd=limit_usd)
    budget.limit_usd = limit_usd
    budget.hard = hard
    budget.thresholds = sorted(set(thresholds))
    budget.updated_at = now
    session.add(budget)
    await session.flush()
    return budget
