"""The attempt protocol both outboxes share: alert webhooks (``webhook_outbox``) and batch events
(``batch_events``).

A row is ``pending`` until delivered or given up. A worker takes one attempt with :func:`claim`, a
compare-and-set that bumps ``attempts`` and pushes ``next_attempt_at`` to the end of its lease, so no other
worker posts the row meanwhile. It records the outcome with :func:`finish`, which holds only while the
row still carries the attempt number it claimed: a worker frozen past its lease, whose row another worker
has claimed (and perhaps delivered) since, changes nothing when it wakes.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.models import BatchEvent, WebhookDelivery

OutboxRow = WebhookDelivery | BatchEvent
LEASE_MARGIN_S = 5.0
"""How long past its POST's timeout an attempt stays claimed: time enough to record the answer."""


async def claim(session: AsyncSession, row: OutboxRow, lease_until: float) -> bool:
    """Take one due row for an attempt (as it was read: same attempts, same due time); False if another
    worker took it first."""
    table = type(row)
    result = await session.exec(
        update(table)
        .where(
            col(table.id) == row.id,
            col(table.state) == "pending",
            col(table.attempts) == row.attempts,
            col(table.next_attempt_at) == row.next_attempt_at,
        )
        .values(attempts=row.attempts + 1, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


async def finish(session: AsyncSession, row: OutboxRow, *, state: str, next_attempt_at: float, **values: Any) -> bool:
    """Record the outcome of the attempt claimed from ``row`` (as read before :func:`claim`): ``delivered``,
    ``pending`` (retry at ``next_attempt_at``) or given up. False, writing nothing, when the attempt is no
    longer the row's latest (its lease ran out and another worker claimed it)."""
    table = type(row)
    values |= {"state": state, "next_attempt_at": next_attempt_at}
    if state == "delivered":
        values["delivered_at"] = time.time()
    result = await session.exec(
        update(table)
        .where(col(table.id) == row.id, col(table.state) == "pending", col(table.attempts) == row.attempts + 1)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)
