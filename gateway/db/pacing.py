"""Database access for the provider limits every gateway process shares (PostgreSQL only).

A provider's request timeline is one row (:class:`~gateway.db.models.ProviderPacing`): ``next_free_at``
is the time from which nobody has reserved it yet. A reservation moves it forward in one atomic
``UPDATE ... RETURNING`` from ``greatest(now, next_free_at, rate_limited_until)``, so the reservations of
all processes follow each other on one line and none starts inside a 429 pause. The pause is
``rate_limited_until`` of the provider's health row. Times come from the database's clock and are handed
back with its "now", so that each process can place them on its own clock.

Run these on a connection in autocommit mode: each is one statement (two when a row is missing), so a
provider's row is locked for the length of one statement only.
"""

from __future__ import annotations

import time

from sqlalchemy import Float, cast, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from gateway.db.models import ProviderHealth, ProviderPacing


def database_now() -> ColumnElement[float]:
    """The database's clock as Unix seconds, read when the expression is evaluated (not at transaction start)."""
    return cast(func.extract("epoch", func.clock_timestamp()), Float)


def rate_limited_until(provider: str) -> ColumnElement[float]:
    """The end of the provider's 429 pause (0 when it never had one), as a scalar subquery."""
    until = select(ProviderHealth.rate_limited_until).where(col(ProviderHealth.provider) == provider)
    return func.coalesce(until.scalar_subquery(), 0.0)


async def reserve(connection: AsyncConnection, provider: str, seconds: float) -> tuple[float, float, float]:
    """Reserve the next ``seconds`` of the provider's timeline.

    Returns when the reserved stretch starts, when the provider's 429 pause ends (0 if it never had one)
    and the database's "now", as Unix seconds of the database's clock.
    """
    now = database_now()
    paused = rate_limited_until(provider)
    statement = (
        update(ProviderPacing)
        .where(col(ProviderPacing.provider) == provider)
        .values(next_free_at=func.greatest(now, ProviderPacing.next_free_at, paused) + seconds, updated_at=now)
        .returning(col(ProviderPacing.next_free_at) - seconds, paused, now)
    )
    row = (await connection.execute(statement)).first()
    if row is None:
        created = postgresql.insert(ProviderPacing).values(provider=provider, next_free_at=0.0, updated_at=time.time())
        await connection.execute(created.on_conflict_do_nothing(index_elements=["provider"]))
        row = (await connection.execute(statement)).one()
    return float(row[0]), float(row[1]), float(row[2])


async def pause(connection: AsyncConnection, provider: str, seconds: float) -> tuple[float, float]:
    """A 429 asked to hold requests to ``provider`` for ``seconds``: extend its pause to at least then.

    The pause is ``rate_limited_until`` of the provider's health row (created if missing). Returns when
    the pause ends (later than asked when another process had set a longer one) and the database's "now".
    """
    values = {"provider": provider, "circuit": "closed", "consecutive_failures": 0, "updated_at": time.time()}
    created = postgresql.insert(ProviderHealth).values(**values)
    await connection.execute(created.on_conflict_do_nothing(index_elements=["provider"]))
    now = database_now()
    until = func.greatest(func.coalesce(ProviderHealth.rate_limited_until, 0.0), now + seconds)
    statement = (
        update(ProviderHealth)
        .where(col(ProviderHealth.provider) == provider)
        .values(rate_limited_until=until, updated_at=now)
        .returning(col(ProviderHealth.rate_limited_until), now)
    )
    ends, at = (await connection.execute(statement)).one()
    return float(ends or 0.0), float(at)


async def clock(connection: AsyncConnection) -> tuple[float]:
    """The database's "now" alone, as Unix seconds (a reading to learn its clock from)."""
    return (float((await connection.execute(sa_select(database_now()))).scalar_one()),)


async def paused_until(connection: AsyncConnection, provider: str) -> tuple[float, float]:
    """When the provider's 429 pause ends (0 if it never had one) and the database's "now"."""
    ends, at = (await connection.execute(sa_select(rate_limited_until(provider), database_now()))).one()
    return float(ends), float(at)
