"""Database access for batch webhooks: the endpoints teams register and the outbox of their events.

An event is queued from committed state: a sweep finds the batches of an endpoint's team that ended (in a
status the endpoint asked for) since the endpoint was registered and have no event for it yet; the unique
(endpoint, batch) pair makes that idempotent across workers. Deliveries are claimed with a compare-and-set,
as the alert outbox's are (:mod:`gateway.db.outbox`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import exists, func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.engine import dialect_insert
from gateway.db.models import Batch, BatchEvent, WebhookEndpoint, new_id

EVENT_TYPES = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
"""The batch events an endpoint may ask for: ``batch.`` + the terminal status."""


async def add_endpoint(
    session: AsyncSession, team_id: str, url: str, event_types: list[str], name: str | None, secret: str
) -> WebhookEndpoint:
    """Register an endpoint (the caller commits)."""
    endpoint = WebhookEndpoint(team_id=team_id, url=url, event_types=event_types, name=name, signing_secret=secret)
    session.add(endpoint)
    await session.flush()
    return endpoint


async def endpoints(session: AsyncSession, team_id: str | None = None) -> Sequence[WebhookEndpoint]:
    """Registered (not deleted) endpoints, newest first, of one team if given."""
    query = select(WebhookEndpoint).where(col(WebhookEndpoint.deleted_at).is_(None))
    if team_id is not None:
        query = query.where(WebhookEndpoint.team_id == team_id)
    return (await session.exec(query.order_by(col(WebhookEndpoint.created_at).desc(), col(WebhookEndpoint.id)))).all()


async def get_endpoint(session: AsyncSession, endpoint_id: str) -> WebhookEndpoint | None:
    """A registered (not deleted) endpoint."""
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    return endpoint if endpoint is not None and endpoint.deleted_at is None else None


async def delete_endpoint(session: AsyncSession, endpoint_id: str, now: int) -> bool:
    """Stop posting to an endpoint (its undelivered events are dropped with it); False if unknown."""
    result = await session.exec(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint_id, col(WebhookEndpoint.deleted_at).is_(None))
        .values(deleted_at=now)
    )
    return bool(result.rowcount)


async def queue_new_events(session: AsyncSession, endpoint: WebhookEndpoint, limit: int) -> int:
    """Queue an event for each batch of the endpoint's team that ended since it was registered, in a status it
    asked for, and has none for it yet; returns how many were queued."""
    ended = func.coalesce(Batch.completed_at, Batch.failed_at, Batch.expired_at, Batch.cancelled_at)
    statuses = [kind.removeprefix("batch.") for kind in endpoint.event_types]
    queued = exists().where(col(BatchEvent.endpoint_id) == endpoint.id, col(BatchEvent.batch_id) == Batch.id)
    rows = (
        await session.exec(
            select(Batch.id, Batch.status, ended)
            .where(
                Batch.team_id == endpoint.team_id,
                col(Batch.status).in_(statuses),
                ended >= endpoint.created_at,
                ~queued,
            )
            .order_by(col(Batch.seq))
            .limit(limit)
        )
    ).all()
    if not rows:
        return 0
    now = time.time()
    values = [
        {
            "id": new_id("evt_", 32),
            "message_id": new_id("wh_", 32),
            "endpoint_id": endpoint.id,
            "batch_id": batch_id,
            "type": f"batch.{status}",
            "created_at": int(ended_at),
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "queued_at": now,
        }
        for batch_id, status, ended_at in rows
    ]
    insert = dialect_insert(session)
    await session.exec(
        insert(BatchEvent).values(values).on_conflict_do_nothing(index_elements=["endpoint_id", "batch_id"])
    )
    return len(values)


async def due_events(session: AsyncSession, now: float, limit: int) -> Sequence[tuple[BatchEvent, WebhookEndpoint]]:
    """Pending events whose attempt is due, oldest first, with their (not deleted) endpoints."""
    rows = await session.exec(
        select(BatchEvent, WebhookEndpoint)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(BatchEvent.endpoint_id))
        .where(
            BatchEvent.state == "pending",
            col(BatchEvent.next_attempt_at) <= now,
            col(WebhookEndpoint.deleted_at).is_(None),
        )
        .order_by(col(BatchEvent.next_attempt_at), col(BatchEvent.id))
        .limit(limit)
    )
    return list(rows.all())


async def recent_events(session: AsyncSession, endpoint_id: str, limit: int) -> Sequence[BatchEvent]:
    """An endpoint's latest events, newest first."""
    return (
        await session.exec(
            select(BatchEvent)
            .where(BatchEvent.endpoint_id == endpoint_id)
            .order_by(col(BatchEvent.queued_at).desc(), col(BatchEvent.id))
            .limit(limit)
        )
    ).all()


async def event_counts(session: AsyncSession, endpoint_id: str) -> dict[str, int]:
    """An endpoint's events by state."""
    rows = await session.exec(
        select(BatchEvent.state, func.count()).where(BatchEvent.endpoint_id == endpoint_id).group_by(BatchEvent.state)
    )
    return {str(state): int(count) for state, count in rows.all()}
