"""Queries behind the state gauges of ``/metrics``, read from the shared database at scrape time.

Every gateway process answers a scrape from the same tables, so state metrics are right however
many processes run (Prometheus sees the same values from each; rules aggregate them with ``max``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.models import Batch, ProviderHealth, Shard

BATCH_STATUSES = (
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled",
)  # fmt: skip
"""Every status a batch can have (OpenAI's lifecycle)."""

UNFINISHED_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
"""Statuses of batches that can still spend."""

SHARD_STATES = ("queued", "submitting", "running", "executing", "collecting", "done")
"""Every state a shard can have."""

CIRCUIT_STATES = ("closed", "open", "half_open")
"""States of a provider's circuit breaker."""

HOLD_REASONS = ("canary", "budget")
"""Why an unfinished batch is held: for an operator after its canary, or stopped for a hard budget."""


@dataclass(frozen=True)
class BudgetUse:
    """One budget and what its current period has spent."""

    scope: str
    period: str
    limit_usd: float
    spent_usd: float
    utilization: float
    reserved_usd: float = 0.0
    hard: bool = False


@dataclass(frozen=True)
class MetricsSnapshot:
    """The state gauges' values at one moment."""

    batches: dict[str, int] = field(default_factory=dict)
    """Batch count by status."""
    shards: dict[tuple[str, str], int] = field(default_factory=dict)
    """Shard count by (state, provider)."""
    circuits: dict[str, str] = field(default_factory=dict)
    """Circuit state by provider (providers without a health row are closed)."""
    budgets: list[BudgetUse] = field(default_factory=list)
    """Filled by the caller from the billing package, which owns how a budget's period and spend are counted."""
    held_batches: dict[str, int] = field(default_factory=dict)
    """Unfinished batches by hold reason."""
    oldest_queued_shard_age_s: float = 0.0
    batches_past_window: int = 0


async def metrics_snapshot(session: AsyncSession, now: float | None = None) -> MetricsSnapshot:
    """Read every state gauge's value from the database."""
    now = time.time() if now is None else now
    status_rows = await session.execute(select(col(Batch.status), func.count()).group_by(col(Batch.status)))
    batches = {str(status): int(count) for status, count in status_rows.all()}
    shard_rows = await session.execute(
        select(col(Shard.state), col(Shard.provider), func.count()).group_by(col(Shard.state), col(Shard.provider))
    )
    shards = {(str(state), str(provider)): int(count) for state, provider, count in shard_rows.all()}
    health_rows = await session.execute(select(col(ProviderHealth.provider), col(ProviderHealth.circuit)))
    circuits = {str(provider): str(circuit) for provider, circuit in health_rows.all()}
    oldest = (
        await session.execute(select(func.min(col(Shard.created_at))).where(col(Shard.state) == "queued"))
    ).scalar_one_or_none()
    past_window = (
        await session.execute(
            select(func.count())
            .select_from(Batch)
            .where(col(Batch.status).in_(UNFINISHED_STATUSES), col(Batch.expires_at) < now)
        )
    ).scalar_one()
    return MetricsSnapshot(
        batches=batches,
        shards=shards,
        circuits=circuits,
        held_batches=await _held_batches(session),
        oldest_queued_shard_age_s=max(0.0, now - float(oldest)) if oldest is not None else 0.0,
        batches_past_window=int(past_window),
    )


async def _held_batches(session: AsyncSession) -> dict[str, int]:
    """Unfinished batches by hold reason."""
    rows = await session.execute(
        select(col(Batch.hold_reason), func.count())
        .where(col(Batch.status).in_(UNFINISHED_STATUSES), col(Batch.hold_reason).is_not(None))
        .group_by(col(Batch.hold_reason))
    )
    return {str(reason): int(count) for reason, count in rows.all()}
