"""Database access for the provider limits every gateway process shares (PostgreSQL only).

A provider's request timeline is one row (:class:`~gateway.db.models.ProviderPacing`): ``next_free_at``
is the time from which nobody has reserved it yet. A reservation moves it forward in one atomic
``UPDATE ... RETURNING`` from ``greatest(now, next_free_at, rate_limited_until)``, so the reservations of
all processes follow each other on one line and none starts inside a 429 pause. The pause is
``rate_limited_until`` of the provider's health row. Times come from the database's clock and are handed
back with its "now", so that each process can place them on its own clock.

Run these on a connection in autocommit mode: each is one statement (two when a row is missing), so a
provider's row is locked for the length of one statement only; :func:`claim_slots` is the exception, a short
transaction of its own.

A provider's ``max_concurrency`` is shared out as *slots* (:class:`~gateway.db.models.ProviderSlots`): each process
holding some has a row with how many it may use, how many it wanted, and when its lease ends. A claim, under the
provider's advisory lock, drops expired rows, gives the claimer its fair share of what the others leave free
(:func:`fair_share`), and writes its row back: the rows' slots never add up to more than the limit, whatever the
number of processes (but for what a process whose lease ended still had in flight).
"""

from __future__ import annotations

import time
import zlib

from sqlalchemy import Float, cast, delete, func, literal, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from gateway.db.models import ProviderHealth, ProviderPacing, ProviderSlots


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


def fair_share(limit: int, wants: dict[str, int], holder: str, turn: int = 0) -> int:
    """``holder``'s share of ``limit`` slots among ``wants`` (what each holder wants, its own included): each gets
    what it wants up to an equal part of what the smaller wants leave (water-filling), and the shares add up to at
    most ``limit``. A slot the division leaves over goes to the holders first in an order that changes with
    ``turn`` (claims pass a new turn every second), so that when more processes want slots than there are, none
    is left out for good."""
    left = limit
    ordered = sorted(wants.items(), key=lambda item: (item[1], zlib.crc32(f"{item[0]}:{turn}".encode())))
    for index, (name, want) in enumerate(ordered):
        share = min(want, -(-left // (len(ordered) - index)))
        if name == holder:
            return share
        left -= share
    return 0


async def claim_slots(
    engine: AsyncEngine, provider: str, holder: str, limit: int, wanted: int, in_use: int, lease_s: float
) -> int:
    """Renew ``holder``'s slots at ``provider`` (``limit`` in all) for ``lease_s`` seconds, in one transaction under
    the provider's advisory lock; returns how many it may use now.

    ``wanted`` is what it has in flight and waiting, ``in_use`` what it may have in flight until the answer comes.
    It gets its :func:`fair_share` of the limit, but never more than the other live rows leave free (a process
    over its share gives back at its own next claim); its row keeps at least ``in_use``. The limit is the smallest
    of the live rows' and its own, should processes be configured differently. A holder wanting nothing and
    holding nothing gives its row up.
    """
    async with engine.begin() as connection:
        await connection.execute(
            sa_select(func.pg_advisory_xact_lock(func.hashtext(literal("batchgw-slots:" + provider))))
        )
        now = database_now()
        mine = (col(ProviderSlots.provider) == provider, col(ProviderSlots.holder) == holder)
        await connection.execute(
            delete(ProviderSlots).where(col(ProviderSlots.provider) == provider, col(ProviderSlots.expires_at) < now)
        )
        if wanted == 0 and in_use == 0:
            await connection.execute(delete(ProviderSlots).where(*mine))
            return 0
        columns = (col(ProviderSlots.holder), col(ProviderSlots.slots), col(ProviderSlots.wanted))
        others = (
            await connection.execute(
                sa_select(*columns, col(ProviderSlots.limit)).where(
                    col(ProviderSlots.provider) == provider, col(ProviderSlots.holder) != holder
                )
            )
        ).all()
        shared = min([limit, *(int(row.limit) for row in others)])
        free = shared - sum(int(row.slots) for row in others)
        wants = {str(row.holder): int(row.wanted) for row in others} | {holder: wanted}
        granted = max(0, min(fair_share(shared, wants, holder, int(time.time())), free))
        row = {"slots": max(granted, in_use), "wanted": wanted, "limit": limit, "expires_at": now + lease_s}
        upsert = postgresql.insert(ProviderSlots).values(provider=provider, holder=holder, **row)
        await connection.execute(upsert.on_conflict_do_update(index_elements=["provider", "holder"], set_=row))
        return granted
