"""Database access for routing: decisions, provider circuit breakers and observed turnaround."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.models import ProviderHealth, RoutingDecision, Shard

SUCCESS_STAMP_EVERY_S = 30.0

# --- decisions --------------------------------------------------------------------------------


async def batch_decisions(session: AsyncSession, batch_id: str) -> Sequence[RoutingDecision]:
    """Every routing decision of a batch, oldest first."""
    query = select(RoutingDecision).where(RoutingDecision.batch_id == batch_id).order_by(col(RoutingDecision.id))
    return (await session.exec(query)).all()


# --- provider health --------------------------------------------------------------------------


async def health_rows(session: AsyncSession) -> dict[str, ProviderHealth]:
    """The circuit breaker row of every provider that has one."""
    return {row.provider: row for row in (await session.exec(select(ProviderHealth))).all()}


async def ensure_health_row(session: AsyncSession, provider: str) -> None:
    """Create a provider's breaker row (closed) unless it exists; safe against concurrent creators."""
    values = {"provider": provider, "circuit": "closed", "consecutive_failures": 0, "updated_at": time.time()}
    table = ProviderHealth.__table__  # type: ignore[attr-defined]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    await session.exec(insert.values(**values).on_conflict_do_nothing(index_elements=["provider"]))


async def record_failure(
    session: AsyncSession, provider: str, error: str, threshold: int
) -> tuple[ProviderHealth, bool]:
    """Count one failed call; open the circuit at ``threshold`` in a row or when a probe failed.

    Returns the row and whether this call opened the circuit.
    """
    await ensure_health_row(session, provider)
    now = time.time()
    await session.exec(
        update(ProviderHealth)
        .where(col(ProviderHealth.provider) == provider)
        .values(
            consecutive_failures=ProviderHealth.consecutive_failures + 1,
            last_error=error[:2000],
            last_failure_at=now,
            updated_at=now,
        )
    )
    row = (
        await session.exec(select(ProviderHealth).where(ProviderHealth.provider == provider).with_for_update())
    ).one()
    await session.refresh(row)
    opens = row.circuit == "half_open" or (row.circuit == "closed" and row.consecutive_failures >= threshold)
    if opens:
        row.circuit, row.opened_at, row.probe_until = "open", now, None
        session.add(row)
    return row, opens


async def force_open(session: AsyncSession, provider: str, error: str) -> bool:
    """Open a provider's circuit at once (a failure retrying cannot fix); True if it was not open already."""
    await ensure_health_row(session, provider)
    now = time.time()
    row = (
        await session.exec(select(ProviderHealth).where(ProviderHealth.provider == provider).with_for_update())
    ).one()
    await session.refresh(row)
    was_open = row.circuit == "open"
    row.consecutive_failures += 1
    row.last_error, row.last_failure_at, row.updated_at = error[:2000], now, now
    if not was_open:
        row.circuit, row.opened_at, row.probe_until = "open", now, None
    session.add(row)
    return not was_open


SuccessFound = Literal["closed", "reset", "healthy"]
"""What a successful call found of its provider's health (see :func:`record_success`)."""


async def record_success(session: AsyncSession, provider: str) -> SuccessFound:
    """A call succeeded: close the circuit and reset the count. Returns what it found: ``closed`` (its circuit was
    open or half open), ``reset`` (failures were counted, the circuit closed) or ``healthy`` (nothing to reset).

    ``last_success_at`` is refreshed at most every :data:`SUCCESS_STAMP_EVERY_S`, so a busy provider
    costs one read per success, not a write.
    """
    now = time.time()
    row = (await session.exec(select(ProviderHealth).where(ProviderHealth.provider == provider))).first()
    if row is None:
        await ensure_health_row(session, provider)
        await session.exec(
            update(ProviderHealth).where(col(ProviderHealth.provider) == provider).values(last_success_at=now)
        )
        return "healthy"
    found: SuccessFound = (
        "closed" if row.circuit != "closed" else "reset" if row.consecutive_failures > 0 else "healthy"
    )
    stale = row.last_success_at is None or row.last_success_at < now - SUCCESS_STAMP_EVERY_S
    if found != "healthy" or stale:
        await session.exec(
            update(ProviderHealth)
            .where(col(ProviderHealth.provider) == provider)
            .values(circuit="closed", consecutive_failures=0, opened_at=None, probe_until=None, last_success_at=now)
        )
    return found


async def claim_probe(session: AsyncSession, provider: str, cooldown_s: float, probe_s: float) -> bool:
    """Move an open circuit whose cool-down passed to ``half_open``, for one caller only (compare-and-set)."""
    now = time.time()
    result = await session.exec(
        update(ProviderHealth)
        .where(
            col(ProviderHealth.provider) == provider,
            ((col(ProviderHealth.circuit) == "open") & (col(ProviderHealth.opened_at) <= now - cooldown_s))
            | ((col(ProviderHealth.circuit) == "half_open") & (col(ProviderHealth.probe_until) < now)),
        )
        .values(circuit="half_open", probe_until=now + probe_s, updated_at=now)
    )
    return bool(result.rowcount)


# --- turnaround -------------------------------------------------------------------------------


async def turnaround_samples(session: AsyncSession, per_model: int) -> dict[tuple[str, str], list[float]]:
    """Seconds from submit to end of recent provider batches that completed, by (provider, provider model)."""
    query = (
        select(Shard.provider, Shard.provider_model, Shard.submitted_at, Shard.finished_at)
        .where(
            Shard.state == "done",
            Shard.end_reason == "completed",
            Shard.mode == "batch",
            col(Shard.submitted_at).is_not(None),
            col(Shard.finished_at).is_not(None),
        )
        .order_by(col(Shard.finished_at).desc())
        .limit(per_model * 50)
    )
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    for provider, provider_model, submitted_at, finished_at in (await session.exec(query)).all():
        bucket = samples[(provider, provider_model)]
        if len(bucket) < per_model and submitted_at is not None and finished_at is not None:
            bucket.append(max(0.0, finished_at - submitted_at))
    return dict(samples)
