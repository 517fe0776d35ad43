"""Database access for batches created through the Anthropic-compatible endpoint (``message_batches``)."""

from __future__ import annotations

import time

from sqlalchemy import delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.models import Batch, MessageBatch, now_s

PUBLIC_PREFIX = "msgbatch_"
BATCH_PREFIX = "batch_"


def public_id(batch_id: str) -> str:
    """``msgbatch_…`` for the batch ``batch_…`` that runs a message batch."""
    return PUBLIC_PREFIX + batch_id.removeprefix(BATCH_PREFIX)


def batch_id_of(message_batch_id: str) -> str | None:
    """The batch id behind a ``msgbatch_…`` id; None for an id of another shape."""
    if not message_batch_id.startswith(PUBLIC_PREFIX) or len(message_batch_id) > 64:
        return None
    return BATCH_PREFIX + message_batch_id.removeprefix(PUBLIC_PREFIX)


async def get(session: AsyncSession, team_id: str, message_batch_id: str) -> tuple[MessageBatch, Batch] | None:
    """A live (not deleted) message batch of the team, with the batch that runs it."""
    batch_id = batch_id_of(message_batch_id)
    if batch_id is None:
        return None
    query = (
        select(MessageBatch, Batch)
        .join(Batch, col(Batch.id) == col(MessageBatch.batch_id))
        .where(MessageBatch.batch_id == batch_id, MessageBatch.team_id == team_id)
        .where(col(MessageBatch.deleted_at).is_(None))
    )
    row = (await session.exec(query)).first()
    return (row[0], row[1]) if row is not None else None


async def runs_one(session: AsyncSession, batch_id: str) -> bool:
    """True when the batch ``batch_id`` runs a message batch (deleted or not)."""
    query = select(MessageBatch.batch_id).where(MessageBatch.batch_id == batch_id)
    return (await session.exec(query)).first() is not None


async def page(
    session: AsyncSession, team_id: str, *, before: Batch | None, after: Batch | None, limit: int
) -> list[tuple[MessageBatch, Batch]]:
    """Up to ``limit`` live message batches of the team, newest first: those older than ``after`` or, with
    ``before``, the ones just newer than it."""
    query = (
        select(MessageBatch, Batch)
        .join(Batch, col(Batch.id) == col(MessageBatch.batch_id))
        .where(MessageBatch.team_id == team_id, col(MessageBatch.deleted_at).is_(None))
    )
    if before is not None and before.seq is not None:
        query = query.where(col(Batch.seq) > before.seq).order_by(col(Batch.seq).asc())
        rows = list((await session.exec(query.limit(limit))).all())
        rows.reverse()
    else:
        if after is not None and after.seq is not None:
            query = query.where(col(Batch.seq) < after.seq)
        rows = list((await session.exec(query.order_by(col(Batch.seq).desc()).limit(limit))).all())
    return [(row[0], row[1]) for row in rows]


async def keep_counts(session: AsyncSession, batch_id: str, counts: dict[str, int]) -> None:
    """Store the final request counts of an ended message batch (the caller commits)."""
    await session.exec(update(MessageBatch).where(col(MessageBatch.batch_id) == batch_id).values(counts=counts))


async def mark_deleted(session: AsyncSession, batch_id: str) -> bool:
    """Hide a message batch, and the batch that ran it, from its team for good; False if it was already deleted."""
    now = now_s()
    result = await session.exec(
        update(MessageBatch)
        .where(col(MessageBatch.batch_id) == batch_id, col(MessageBatch.deleted_at).is_(None))
        .values(deleted_at=now)
    )
    # The batch is the same work seen through OpenAI's API: deleted there too (an operator still sees it).
    await session.exec(update(Batch).where(col(Batch.id) == batch_id).values(deleted_at=now, updated_at=time.time()))
    return bool(result.rowcount)


async def remove(session: AsyncSession, batch_id: str) -> None:
    """Remove the message batch row of a batch that is being removed itself (the caller commits)."""
    await session.exec(delete(MessageBatch).where(col(MessageBatch.batch_id) == batch_id))
