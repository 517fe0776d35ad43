"""The database access layer for learned estimates: per team, model and endpoint, how long answers were.

Collection adds every collected shard's answers (:mod:`gateway.pipeline.ledger`); estimates read them
(:mod:`gateway.billing.estimate`). Every function takes an open ``AsyncSession`` and leaves committing to
the caller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.engine import dialect_insert
from gateway.db.models import OutputTokenStats


async def output_stats(session: AsyncSession, team_id: str, endpoint: str) -> Sequence[OutputTokenStats]:
    """The team's history rows (one per logical model) for ``endpoint``."""
    query = select(OutputTokenStats).where(OutputTokenStats.team_id == team_id, OutputTokenStats.endpoint == endpoint)
    return list((await session.exec(query)).all())


async def add_to_history(
    session: AsyncSession,
    team_id: str,
    model: str,
    endpoint: str,
    *,
    requests: int,
    output_tokens: int,
    input_tokens: int,
    estimated_input_tokens: int,
    histogram: dict[int, int],
) -> None:
    """Count a collected shard's answered requests in the team's history (in the caller's transaction).

    The row is created if missing (without failing on a concurrent creator) and then locked, so two shards
    collected at once both count. ``histogram`` counts requests per bucket (see :mod:`gateway.billing.history`).
    """
    if requests == 0:
        return
    insert = dialect_insert(session)
    await session.exec(
        insert(OutputTokenStats)
        .values(
            team_id=team_id,
            model=model,
            endpoint=endpoint,
            requests=0,
            output_tokens=0,
            input_tokens=0,
            estimated_input_tokens=0,
            histogram={},
            updated_at=time.time(),
        )
        .on_conflict_do_nothing(index_elements=["team_id", "model", "endpoint"])
    )
    where = (
        col(OutputTokenStats.team_id) == team_id,
        col(OutputTokenStats.model) == model,
        col(OutputTokenStats.endpoint) == endpoint,
    )
    if session.get_bind().dialect.name == "sqlite":
        row = (await session.exec(select(OutputTokenStats).where(*where))).one()
    else:
        row = (await session.exec(select(OutputTokenStats).where(*where).with_for_update())).one()
    await session.refresh(row)
    merged = {str(k): int(v) for k, v in row.histogram.items()}
    for bucket, count in histogram.items():
        merged[str(bucket)] = merged.get(str(bucket), 0) + count
    await session.exec(
        update(OutputTokenStats)
        .where(col(OutputTokenStats.id) == row.id)
        .values(
            requests=row.requests + requests,
            output_tokens=row.output_tokens + output_tokens,
            input_tokens=row.input_tokens + input_tokens,
            estimated_input_tokens=row.estimated_input_tokens + estimated_input_tokens,
            histogram=merged,
            updated_at=time.time(),
        )
        .execution_options(synchronize_session=False)
    )
