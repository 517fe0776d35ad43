"""Database access for abandoned provider batches (see :class:`~gateway.db.models.AbandonedProviderBatch`).

The caller's unit of work commits these writes, except :func:`claim_due`, which commits each claim on its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.leases import Lease, keeping_wakeups, mirror_write
from gateway.db.models import AbandonedProviderBatch, Batch, Shard
from gateway.db.unit_of_work import reading, transaction


async def register(
    session: AsyncSession,
    shard: Shard,
    batch: Batch,
    reason: str,
    *,
    provider_batch_id: str | None,
    submit_token: str | None = None,
    origin: str = "abandoned",
) -> None:
    """Keep a provider batch the gateway stops waiting for, to cancel, poll and bill it until it ends.

    Idempotent per provider and submit token: registering the same provider batch twice keeps one row.
    """
    values = {
        "shard_id": shard.id,
        "batch_id": batch.id,
        "team_id": batch.team_id,
        "api_key_id": batch.api_key_id,
        "provider": shard.provider,
        "model": shard.model,
        "provider_model": shard.provider_model,
        "submit_token": submit_token or shard.submit_token,
        "provider_batch_id": provider_batch_id,
        "origin": origin,
        "reason": reason[:2000],
        "state": "open",
        "requests_billed": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
        "input_per_mtok": shard.input_per_mtok,
        "output_per_mtok": shard.output_per_mtok,
        "attempts": 0,
        "next_action_at": time.time(),
        "lease_token": 0,
        "created_at": time.time(),
    }
    table = AbandonedProviderBatch.__table__  # type: ignore[attr-defined]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    await session.exec(insert.values(**values).on_conflict_do_nothing(index_elements=["provider", "submit_token"]))


async def claim_due(
    sessions: async_sessionmaker[AsyncSession], owner: str, lease_s: float, limit: int = 8
) -> list[AbandonedProviderBatch]:
    """Claim open rows due for a cancel or a poll (compare-and-set per row, each committed on its own, as
    shard claims)."""
    now = time.time()
    free = or_(
        col(AbandonedProviderBatch.lease_expires_at).is_(None), col(AbandonedProviderBatch.lease_expires_at) < now
    )
    due = (col(AbandonedProviderBatch.state) == "open", col(AbandonedProviderBatch.next_action_at) <= now, free)
    async with reading(sessions) as session:
        ids = (
            await session.exec(
                select(AbandonedProviderBatch.id)
                .where(*due)
                .order_by(col(AbandonedProviderBatch.next_action_at))
                .limit(limit)
            )
        ).all()
    claimed: list[AbandonedProviderBatch] = []
    for row_id in ids:
        async with transaction(sessions) as session:
            result = await session.exec(
                update(AbandonedProviderBatch)
                .where(col(AbandonedProviderBatch.id) == row_id, *due)
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                    lease_token=col(AbandonedProviderBatch.lease_token) + 1,
                )
            )
            row = await session.get(AbandonedProviderBatch, row_id) if result.rowcount == 1 else None
        if row is not None:
            claimed.append(row)
    return claimed


async def save(session: AsyncSession, row: AbandonedProviderBatch, lease: Lease, **values: Any) -> bool:
    """Write ``values`` while ``lease`` holds the row; False (nothing written) once lost. A ``next_action_at``
    never undoes a wake-up that came while the row was held (:func:`gateway.db.leases.keeping_wakeups`)."""
    written = dict(values)
    if values.get("next_action_at") is not None:
        asked = values["next_action_at"]
        written["next_action_at"] = keeping_wakeups(AbandonedProviderBatch, row.next_action_at, asked)
    result = await session.exec(
        update(AbandonedProviderBatch)
        .where(col(AbandonedProviderBatch.id) == row.id, *lease.holds(AbandonedProviderBatch))
        .values(**written)
    )
    if result.rowcount:
        mirror_write(session, row, values)
    return bool(result.rowcount)


async def for_batch(session: AsyncSession, batch_id: str) -> Sequence[AbandonedProviderBatch]:
    """Every abandoned provider batch of a client batch."""
    query = select(AbandonedProviderBatch).where(AbandonedProviderBatch.batch_id == batch_id)
    return (await session.exec(query.order_by(col(AbandonedProviderBatch.id)))).all()


async def open_shard_ids(session: AsyncSession, batch_id: str) -> set[str]:
    """Shards of a batch with an abandoned provider batch not yet settled (their inputs are still needed)."""
    query = select(AbandonedProviderBatch.shard_id).where(
        AbandonedProviderBatch.batch_id == batch_id, AbandonedProviderBatch.state == "open"
    )
    return set((await session.exec(query)).all())


async def open_count(session: AsyncSession) -> int:
    """Abandoned provider batches not yet ended at their provider."""
    query = select(func.count()).select_from(AbandonedProviderBatch).where(AbandonedProviderBatch.state == "open")
    return int((await session.exec(query)).one())


async def orphan_fate(session: AsyncSession, row: AbandonedProviderBatch, provider_batch_id: str) -> str:
    """What became of an orphan's shard: ``undecided`` while a worker may still adopt the provider batch
    (the shard is being submitted), ``adopted`` if the shard runs it, else ``orphaned``."""
    shard = await session.get(Shard, row.shard_id)
    if shard is None:
        return "orphaned"
    await session.refresh(shard)
    if shard.state == "submitting":
        return "undecided"
    return "adopted" if shard.provider_batch_id == provider_batch_id else "orphaned"


async def poll_ended_now(session: AsyncSession, provider: str, provider_batch_id: str, now: float) -> int:
    """Make the open abandoned provider batch ``provider_batch_id`` at ``provider`` due for its poll at once (its
    provider announced that it ended); how many rows changed. Reads first: most events name no such batch."""
    match = (
        col(AbandonedProviderBatch.provider) == provider,
        col(AbandonedProviderBatch.state) == "open",
        col(AbandonedProviderBatch.provider_batch_id) == provider_batch_id,
    )
    if (await session.exec(select(AbandonedProviderBatch.id).where(*match))).first() is None:
        return 0
    result = await session.exec(
        # Due already or not: ``now`` is what its poll's status read must follow (see shards._running_due).
        update(AbandonedProviderBatch).where(*match).values(next_action_at=now)
    )
    return int(result.rowcount)
