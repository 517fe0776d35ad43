"""The database access layer for budgets, billing alerts, the webhook outbox, spend from the ledger and
batches stopped for a budget.

Every function takes an open ``AsyncSession`` and leaves committing to the caller. A team's learned output
lengths are in :mod:`gateway.db.history`, the facts a batch's cost projection is made of in
:mod:`gateway.db.projections`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, cast, delete, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.engine import dialect_insert
from gateway.db.models import (
    Batch,
    BillingAlert,
    Budget,
    LedgerEntry,
    Shard,
    Team,
    WebhookDelivery,
)
from gateway.errors import not_found

OPEN_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
"""Batches whose unspent estimate still counts as reserved."""

SPEND_GROUPS = ("provider", "model", "team")
BUCKET_SECONDS = {"hour": 3600, "day": 86400}


def _dialect(session: AsyncSession) -> str:
    bind = session.get_bind()
    return bind.dialect.name


# --- budgets ----------------------------------------------------------------------------------


async def list_budgets(session: AsyncSession) -> Sequence[tuple[Budget, str | None]]:
    """Every budget with its team's name (None for the global ones), global first."""
    rows = await session.exec(
        select(Budget, Team.name)
        .join(Team, col(Team.id) == col(Budget.team_id), isouter=True)
        .order_by(col(Budget.team_id).is_not(None), col(Team.name), col(Budget.period))
    )
    return list(rows.all())


async def budgets_of_team(session: AsyncSession, team_id: str, *, hard_only: bool = False) -> Sequence[Budget]:
    """The team's own budgets and the global ones, in id order."""
    query = select(Budget).where((col(Budget.team_id) == team_id) | (col(Budget.scope) == "global"))
    if hard_only:
        query = query.where(col(Budget.hard).is_(True))
    return list((await session.exec(query.order_by(col(Budget.id)))).all())


async def lock_budgets(session: AsyncSession, budget_ids: Sequence[int]) -> None:
    """Serialise budget checks: row locks on PostgreSQL, the database write lock on SQLite."""
    if not budget_ids:
        return
    if _dialect(session) == "sqlite":
        # A write first takes SQLite's single writer lock, so reads after it see every committed reservation.
        await session.exec(update(Budget).where(col(Budget.id).in_(budget_ids)).values(updated_at=Budget.updated_at))
        return
    locked = select(Budget.id).where(col(Budget.id).in_(budget_ids)).order_by(col(Budget.id)).with_for_update()
    await session.exec(locked)


async def get_budget(session: AsyncSession, budget_id: int) -> Budget | None:
    """One budget by id."""
    return await session.get(Budget, budget_id)


async def find_budget(session: AsyncSession, scope: str, period: str) -> Budget | None:
    """The budget of a scope and period, if any."""
    return (await session.exec(select(Budget).where(Budget.scope == scope, Budget.period == period))).first()


async def delete_budget(session: AsyncSession, budget_id: int) -> bool:
    """Remove a budget; False if it did not exist."""
    result = await session.exec(delete(Budget).where(col(Budget.id) == budget_id))
    return bool(result.rowcount)


async def team_by_name(session: AsyncSession, name: str) -> Team | None:
    """A team by its name."""
    return (await session.exec(select(Team).where(Team.name == name))).first()


async def team_id_named(session: AsyncSession, name: str | None, *, param: str = "team") -> str | None:
    """The id of the team called ``name`` for a filter (None when no name is given); raises
    :class:`~gateway.errors.NotFound` naming ``param`` when no team has that name."""
    if name is None:
        return None
    found = await team_by_name(session, name)
    if found is None:
        raise not_found("team", name, param=param)
    return found.id


async def team_name(session: AsyncSession, team_id: str) -> str | None:
    """A team's name by its id."""
    return (await session.exec(select(Team.name).where(Team.id == team_id))).first()


# --- spend and reservations -------------------------------------------------------------------


async def ledger_spend(session: AsyncSession, team_id: str | None, since: float, until: float) -> float:
    """USD recorded in the ledger in ``[since, until)``, for one team or (None) all teams."""
    query = select(func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0)).where(
        col(LedgerEntry.created_at) >= since, col(LedgerEntry.created_at) < until
    )
    if team_id is not None:
        query = query.where(LedgerEntry.team_id == team_id)
    return float((await session.exec(query)).one() or 0.0)


def expected_cost() -> ColumnElement[Any]:
    """What an open batch is expected to cost in all: its projection (which is never below its estimate once
    set), else its estimate."""
    return func.coalesce(col(Batch.projected_cost_usd), col(Batch.estimated_cost_usd))


async def reserved(session: AsyncSession, team_id: str | None, exclude_batch_id: str | None = None) -> float:
    """What unfinished batches are still expected to spend: sum of max(0, expected - actual), one team or all.

    Expected is the batch's projection (max of its estimate and its spend plus a projection of the rest,
    see :mod:`gateway.billing.guard`), so a reservation follows reality as spend lands.
    """
    remaining = expected_cost() - col(Batch.cost_usd)
    query = select(func.coalesce(func.sum(remaining), 0.0)).where(
        col(Batch.status).in_(OPEN_BATCH_STATUSES),
        col(Batch.estimated_cost_usd).is_not(None),
        remaining > 0,
    )
    if team_id is not None:
        query = query.where(Batch.team_id == team_id)
    if exclude_batch_id is not None:
        query = query.where(Batch.id != exclude_batch_id)
    return float((await session.exec(query)).one() or 0.0)


async def get_batch(session: AsyncSession, batch_id: str) -> Batch | None:
    """A batch by public id (the session's own object if already loaded)."""
    return (await session.exec(select(Batch).where(Batch.id == batch_id))).first()


async def batch_ledger_totals(session: AsyncSession, batch_id: str) -> tuple[int, float]:
    """Requests and USD the ledger holds for one batch."""
    row = (
        await session.exec(
            select(
                func.coalesce(func.sum(LedgerEntry.requests), 0), func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0)
            ).where(LedgerEntry.batch_id == batch_id)
        )
    ).one()
    return int(row[0]), float(row[1])


@dataclass(frozen=True)
class SpendRow:
    """Ledger totals of one bucket and key."""

    bucket_start: int
    key: str
    cost_usd: float
    list_cost_usd: float
    requests: int
    input_tokens: int
    output_tokens: int


def _bucket_expr(session: AsyncSession, seconds: int) -> ColumnElement[Any]:
    # PostgreSQL rounds when casting a float to an integer, SQLite truncates (and may lack floor()).
    if _dialect(session) == "sqlite":
        return cast(cast(col(LedgerEntry.created_at) / seconds, Integer) * seconds, Integer)
    return cast(func.floor(col(LedgerEntry.created_at) / seconds) * seconds, Integer)


async def spend_by(session: AsyncSession, group_by: str, bucket: str, since: float, until: float) -> list[SpendRow]:
    """Ledger totals in ``[since, until)`` per time bucket (UTC hour or day) and provider, model or team name."""
    bucket_col = _bucket_expr(session, BUCKET_SECONDS[bucket]).label("bucket_start")
    is_team = group_by == "team"
    key_expr: Any = func.coalesce(Team.name, LedgerEntry.team_id) if is_team else getattr(LedgerEntry, group_by)
    key = key_expr.label("key")
    query: Any = (
        sa_select(
            bucket_col,
            key,
            func.sum(LedgerEntry.cost_usd),
            func.sum(LedgerEntry.list_cost_usd),
            func.sum(LedgerEntry.requests),
            func.sum(LedgerEntry.input_tokens),
            func.sum(LedgerEntry.output_tokens),
        )
        .where(col(LedgerEntry.created_at) >= since, col(LedgerEntry.created_at) < until)
        .group_by(bucket_col, key)
        .order_by(bucket_col, key)
    )
    if group_by == "team":
        query = query.join(Team, col(Team.id) == col(LedgerEntry.team_id), isouter=True)
    rows = (await session.execute(query)).all()
    return [
        SpendRow(
            bucket_start=int(r[0]),
            key=str(r[1]),
            cost_usd=float(r[2] or 0),
            list_cost_usd=float(r[3] or 0),
            requests=int(r[4] or 0),
            input_tokens=int(r[5] or 0),
            output_tokens=int(r[6] or 0),
        )
        for r in rows
    ]


# --- alerts and the webhook outbox ----------------------------------------------------------------


async def insert_alert_once(session: AsyncSession, alert: BillingAlert) -> BillingAlert | None:
    """Insert the alert unless one with its ``dedup_key`` exists (also one another transaction is adding).

    Returns the stored alert, or None when it had already fired. Never raises on the duplicate, so
    the caller's transaction stays usable.
    """
    values = alert.model_dump(exclude={"id"})
    insert = dialect_insert(session)
    statement = insert(BillingAlert).values(**values).on_conflict_do_nothing(index_elements=["dedup_key"])
    result = await session.exec(statement.returning(col(BillingAlert.id)))
    new_id = result.scalar_one_or_none()
    if new_id is None:
        return None
    return await session.get(BillingAlert, new_id)


async def list_alerts(session: AsyncSession, acknowledged: bool | None, limit: int) -> Sequence[BillingAlert]:
    """Alerts newest first, optionally only (un)acknowledged ones."""
    query = select(BillingAlert)
    if acknowledged is True:
        query = query.where(col(BillingAlert.acknowledged_at).is_not(None))
    elif acknowledged is False:
        query = query.where(col(BillingAlert.acknowledged_at).is_(None))
    return list((await session.exec(query.order_by(col(BillingAlert.id).desc()).limit(limit))).all())


async def get_alert(session: AsyncSession, alert_id: int) -> BillingAlert | None:
    """One alert by id."""
    return await session.get(BillingAlert, alert_id)


async def queue_webhook(session: AsyncSession, alert_id: int, now: float) -> None:
    """Add the alert to the webhook outbox, due now."""
    session.add(WebhookDelivery(alert_id=alert_id, next_attempt_at=now, created_at=now))
    await session.flush()


async def due_deliveries(
    session: AsyncSession, now: float, limit: int
) -> Sequence[tuple[WebhookDelivery, BillingAlert]]:
    """Pending outbox rows whose next attempt is due, oldest first, with their alerts."""
    rows = await session.exec(
        select(WebhookDelivery, BillingAlert)
        .join(BillingAlert, col(BillingAlert.id) == col(WebhookDelivery.alert_id))
        .where(WebhookDelivery.state == "pending", col(WebhookDelivery.next_attempt_at) <= now)
        .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        .limit(limit)
    )
    return list(rows.all())


async def delivery_of(session: AsyncSession, alert_id: int) -> WebhookDelivery | None:
    """The outbox row of an alert, if it was queued."""
    return (await session.exec(select(WebhookDelivery).where(WebhookDelivery.alert_id == alert_id))).first()


async def deliveries_of(session: AsyncSession, alert_ids: Sequence[int]) -> dict[int, WebhookDelivery]:
    """Outbox rows of these alerts, by alert id."""
    if not alert_ids:
        return {}
    rows = await session.exec(select(WebhookDelivery).where(col(WebhookDelivery.alert_id).in_(alert_ids)))
    return {row.alert_id: row for row in rows.all()}


# --- stopping running batches ------------------------------------------------------------------


async def wake_open_shards(session: AsyncSession, batch_id: str) -> None:
    """Make a batch's unfinished shards due now, so they notice a stop at once."""
    await session.exec(
        update(Shard)
        .where(col(Shard.batch_id) == batch_id, col(Shard.state) != "done")
        .values(next_action_at=time.time())
        .execution_options(synchronize_session=False)
    )


async def stop_batch_if_running(session: AsyncSession, batch_id: str, errors: list[dict[str, Any]], now: int) -> bool:
    """Compare-and-set ``in_progress`` -> ``cancelling`` with ``errors``, marked stopped for its budget (``hold_reason``
    ``budget``); only the batch row is written (its shards, locked by workers before their batch, notice at their
    next step)."""
    result = await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch_id, col(Batch.status) == "in_progress")
        .values(
            status="cancelling",
            cancelling_at=now,
            errors=errors,
            projected_cost_usd=Batch.cost_usd,  # nothing more is started: it reserves nothing more
            hold_reason="budget",
            hold_detail=errors[-1]["message"] if errors else None,
            updated_at=time.time(),
        )
    )
    return bool(result.rowcount)


async def held_batches(session: AsyncSession, reason: str) -> Sequence[Batch]:
    """Unfinished batches held for ``reason``, oldest first."""
    query = (
        select(Batch)
        .where(Batch.hold_reason == reason, col(Batch.status).in_(OPEN_BATCH_STATUSES))
        .order_by(col(Batch.created_at))
    )
    return list((await session.exec(query)).all())
