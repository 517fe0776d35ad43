"""Wake-ups across processes, and when the next piece of work falls due.

A process that commits a hand-off (a new batch, a finished stage) wakes its own idle loops through
:class:`gateway.context.WorkSignal`. On PostgreSQL it also sends ``NOTIFY batchgw_work`` after the
commit, and every worker LISTENs on that channel, so a batch created by one API replica is claimed by
an idle worker elsewhere at once, not at its next poll. The notification carries no data: the database
stays the one place that says what is due; a wake-up only makes a worker look sooner. A lost
notification (a listener reconnecting) costs at most one idle interval.

SQLite has no such channel. Processes on one SQLite file announce to each other over Unix datagram
sockets instead (:mod:`gateway.db.local_wakeups`); work written by a process that does not announce
(another machine on a shared file, a hand edit) is found at the next poll, so there idle sleeps stay
short (``worker.poll_interval_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import ColumnElement, case, func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select, text
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db import local_wakeups
from gateway.db.engine import sqlite_file
from gateway.db.models import Batch, Shard

log = logging.getLogger(__name__)

CHANNEL = "batchgw_work"
PROCESS_TOKEN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
"""Payload of this process's notifications, so its own listener ignores them (its loops are woken directly)."""
RECONNECT_S = 2.0


def notifies(engine: AsyncEngine) -> bool:
    """True when every hand-off reaches every worker through the database (PostgreSQL), so an idle worker
    may sleep long."""
    return engine.dialect.name == "postgresql"


def announces(engine: AsyncEngine) -> bool:
    """True when processes on this database can wake each other: PostgreSQL, or a SQLite file on a system
    with Unix sockets."""
    return notifies(engine) or (sqlite_file(engine.url) is not None and local_wakeups.supported())


async def notify(engine: AsyncEngine) -> None:
    """Tell every listening process that work may be ready (after the work's own commit)."""
    if (database_file := sqlite_file(engine.url)) is not None:
        local_wakeups.announce(local_wakeups.directory_for(database_file))
        return
    async with engine.connect() as connection:
        statement = text("SELECT pg_notify(:channel, :token)")
        await connection.execute(statement, {"channel": CHANNEL, "token": PROCESS_TOKEN})
        await connection.commit()


def conninfo(engine: AsyncEngine) -> str:
    """The engine's database as a plain psycopg connection string (a listener needs its own connection)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(engine: AsyncEngine, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``on_wake`` for every other process's notification until ``stop`` is set; reconnects on errors.

    ``on_wake`` is also called after each (re)connect: notifications sent while disconnected are lost.
    """
    if (database_file := sqlite_file(engine.url)) is not None:
        await local_wakeups.listen(local_wakeups.directory_for(database_file), on_wake, stop)
        return
    import psycopg  # here, not at the top: only PostgreSQL deployments listen, and it costs every start

    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(engine), autocommit=True) as connection:
                await connection.execute(f"LISTEN {CHANNEL}")
                on_wake()
                while not stop.is_set():
                    async for message in connection.notifies(timeout=1.0):
                        if message.payload != PROCESS_TOKEN:
                            on_wake()
        except (psycopg.Error, OSError) as exc:
            log.warning("listening for work notifications failed, reconnecting in %.0fs: %s", RECONNECT_S, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECONNECT_S)


async def next_due_at(session: AsyncSession, batch_stages: Sequence[str], shard_states: Sequence[str]) -> float | None:
    """The earliest time a batch in ``batch_stages`` or a shard in ``shard_states`` can be claimed.

    That is its ``next_action_at``, or the end of another worker's lease if later. None when nothing is
    waiting at all.
    """
    earliest: list[float] = []
    tables: list[tuple[type[Batch] | type[Shard], ColumnElement[bool]]] = []
    tables += [(Batch, col(Batch.stage).in_(batch_stages))] if batch_stages else []
    tables += [(Shard, col(Shard.state).in_(shard_states))] if shard_states else []  # a lane claims one table
    for table, where in tables:
        lease_end, next_action = col(table.lease_expires_at), col(table.next_action_at)
        claimable = case((lease_end > next_action, lease_end), else_=next_action)
        value = (await session.exec(select(func.min(claimable)).where(where))).one()
        if value is not None:
            earliest.append(float(value))
    return min(earliest) if earliest else None


def seconds_until(due: float | None, longest_s: float) -> float:
    """How long an idle worker sleeps: until ``due``, at most ``longest_s``."""
    if due is None:
        return longest_s
    return max(0.0, min(longest_s, due - time.time()))
