"""The database access layer for cost projections of running batches: what a projection is computed from
(:func:`projection_facts`, see :mod:`gateway.billing.guard`) and where it is stored.

Every function takes an open ``AsyncSession`` and leaves committing to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.models import Batch, LedgerEntry, Shard


@dataclass(frozen=True)
class ProjectionFacts:
    """What a batch's projection is computed from."""

    open_estimated_usd: float
    """Estimated cost of its unfinished shards, each at the rates of the offer it is placed on."""
    done_expected_usd: float
    """Estimated cost of the requests its finished shards answered."""
    done_served_usd: float
    """What those answers actually cost (ledger, kind 'served')."""
    answered: int
    actual_usd: float
    """Everything the ledger holds for the batch (served and abandoned)."""
    held: int = 0
    """Shards waiting for the batch's canary verdict."""
    collecting: int = 0
    """Shards whose provider finished and whose cost is being collected."""


async def projection_facts(session: AsyncSession, batch_id: str) -> ProjectionFacts:
    """Estimates and actual spend of a batch's shards (see :mod:`gateway.billing.guard`)."""
    open_estimated = (
        await session.exec(
            select(func.coalesce(func.sum(Shard.estimated_cost_usd), 0.0)).where(
                Shard.batch_id == batch_id, col(Shard.state) != "done"
            )
        )
    ).one()
    done = (
        await session.exec(
            select(
                func.coalesce(
                    func.sum(col(Shard.estimated_cost_usd) * col(Shard.result_completed) / col(Shard.request_count)),
                    0.0,
                ),
                func.coalesce(func.sum(Shard.result_completed), 0),
            ).where(Shard.batch_id == batch_id, Shard.state == "done", col(Shard.request_count) > 0)
        )
    ).one()
    served = (
        await session.exec(
            select(func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0)).where(
                LedgerEntry.batch_id == batch_id, LedgerEntry.kind == "served"
            )
        )
    ).one()
    actual = (
        await session.exec(
            select(func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0)).where(LedgerEntry.batch_id == batch_id)
        )
    ).one()
    states = dict(
        (
            await session.exec(
                select(Shard.state, func.count())
                .where(Shard.batch_id == batch_id, col(Shard.state).in_(("held", "collecting")))
                .group_by(Shard.state)
            )
        ).all()
    )
    return ProjectionFacts(
        float(open_estimated),
        float(done[0]),
        float(served),
        int(done[1]),
        float(actual),
        int(states.get("held", 0)),
        int(states.get("collecting", 0)),
    )


async def set_projection(session: AsyncSession, batch_id: str, projected_usd: float) -> None:
    """Store a batch's projected total cost (its reservation follows it)."""
    await session.exec(update(Batch).where(col(Batch.id) == batch_id).values(projected_cost_usd=projected_usd))
