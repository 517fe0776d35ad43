"""``Idempotency-Key`` handling shared by the create endpoints.

A retried create with the same key and team returns the original object; the same key with a
different body answers 409. The key is stored in the same database as the object, and a race
between two concurrent first attempts is settled by the table's primary key.
"""

from __future__ import annotations

import hashlib

from litestar import Request
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.api.errors import APIError
from gateway.api.inputs import check_text
from gateway.db import repo

MAX_KEY_LENGTH = 256


def key_of(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, checked before any work is done."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise APIError(
            400,
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters long.",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    return None if key is None else check_text(key, "Idempotency-Key")


def fingerprint(*parts: str) -> str:
    """A fixed-size digest of what makes two requests the same."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _conflict() -> APIError:
    return APIError(
        409,
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
    session: AsyncSession, team_id: str, kind: str, key: str | None, fingerprint: str, resource_id: str
) -> str | None:
    """Record the key for ``resource_id``; if a concurrent request won, return the winner's id."""
    if not key:
        return None
    winner = await repo.remember_idempotent(session, team_id, kind, key, fingerprint, resource_id)
    if winner is None:
        return None
    if winner.fingerprint != fingerprint:
        raise _conflict()
    return winner.resource_id
