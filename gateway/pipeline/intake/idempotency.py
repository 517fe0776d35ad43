"""Idempotent creation: a retried create with the same key and team returns the original object.

The same key with a different request answers 409. The key is stored in the same database as the
object, and a race between two concurrent first attempts is settled by the table's primary key.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db import repo
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import Conflict


def fingerprint(*parts: str) -> str:
    """A fixed-size digest of what makes two requests the same."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _conflict() -> Conflict:
    return Conflict(
        "This Idempotency-Key was already used with a different request body.",
        code="idempotency_key_reused",
        param="Idempotency-Key",
    )


async def earlier_result(
    session: AsyncSession, team_id: str, kind: str, key: str | None, fingerprint: str
) -> str | None:
    """The id created by an earlier request with this key, or None if there was none."""
    if not key:
        return None
    record = await repo.find_idempotent(session, team_id, kind, key)
    if record is None:
        return None
    if record.fingerprint != fingerprint:
        raise _conflict()
    return record.resource_id


async def remember(
    sessions: async_sessionmaker[AsyncSession],
    team_id: str,
    kind: str,
    key: str | None,
    fingerprint: str,
    resource_id: str,
) -> str | None:
    """Record the key for ``resource_id`` in a unit of work of its own; if a concurrent request won, return the
    winner's id."""
    if not key:
        return None
    try:
        async with transaction(sessions) as session:
            repo.add_idempotent(session, team_id, kind, key, fingerprint, resource_id)
    except IntegrityError:
        async with reading(sessions) as session:
            winner = await repo.find_idempotent(session, team_id, kind, key)
        if winner is None:  # the winner's record vanished (its team was deleted): nothing to defer to
            raise
    else:
        return None
    if winner.fingerprint != fingerprint:
        raise _conflict()
    return winner.resource_id
