"""SQLite under the async engine with one thread hop per statement.

aiosqlite runs each call of its connection on the connection's own thread, and SQLAlchemy's adapter makes
four such calls for every statement (open a cursor, execute, fetch, close), each a round trip between the
event loop and that thread. The gateway runs many short statements per step (claims, leases, the ledger),
so those round trips, not SQLite, were most of a statement's time. :class:`OneHopConnection` keeps
aiosqlite's thread and queue and only changes the cursor: one call runs the statement, reads all its rows,
its row count and last row id, and closes the sqlite3 cursor; the rest are answered from what it kept.
Every row is read at execute, which is what SQLAlchemy's adapter does anyway (the gateway uses no
server-side cursors). It relies on aiosqlite running each call through ``Connection._execute`` on the sqlite3
connection ``Connection._conn`` (0.20 to 0.22 do); ``tests/db/test_sqlite_driver.py`` fails if that changes.
"""

from __future__ import annotations

import functools
import sqlite3
import types
from collections.abc import Generator, Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi


class OneHopCursor:
    """The cursor SQLAlchemy's adapter sees: each execute is one call on the connection's thread."""

    arraysize = 1

    def __init__(self, connection: OneHopConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    def _run(self, method: str, sql: str, parameters: Any) -> None:
        """On the connection's thread: run the statement and keep everything its caller may ask for."""
        cursor = self._connection.sqlite_connection.cursor()
        try:
            getattr(cursor, method)(sql, parameters)
            self.description = cursor.description
            self._rows = cursor.fetchall() if cursor.description else []
            # Read after the rows: for a statement with RETURNING, sqlite3 counts rows as they are fetched.
            self.rowcount = cursor.rowcount
            self.lastrowid = cursor.lastrowid
        finally:
            cursor.close()

    async def execute(self, sql: str, parameters: Any = ()) -> OneHopCursor:
        await self._connection.call(self._run, "execute", sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Any) -> OneHopCursor:
        await self._connection.call(self._run, "executemany", sql, parameters)
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        size = size or self.arraysize
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def close(self) -> None:
        self._rows = []

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _OpenCursor:
    """What ``connection.cursor()`` returns: awaitable and an async context manager, as aiosqlite's is, without
    a call on the thread (the sqlite3 cursor is opened by the statement itself)."""

    def __init__(self, cursor: OneHopCursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, OneHopCursor]:
        return self._cursor.__aenter__().__await__()

    async def __aenter__(self) -> OneHopCursor:
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        await self._cursor.close()


class OneHopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors run a statement in one call on its thread."""

    def cursor(self) -> Any:
        return _OpenCursor(OneHopCursor(self))

    @property
    def sqlite_connection(self) -> sqlite3.Connection:
        """The sqlite3 connection (use only on the connection's thread, inside :meth:`call`)."""
        return self._conn

    async def call(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` on the connection's thread and return its result."""
        return await self._execute(function, *args)


class _Driver(types.ModuleType):
    """The aiosqlite module as SQLAlchemy's adapter uses it, with connections of :class:`OneHopConnection`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(aiosqlite, name)

    @staticmethod
    def connect(database: str, **kwargs: Any) -> OneHopConnection:
        return OneHopConnection(functools.partial(sqlite3.connect, database, **kwargs), 64)


def dbapi() -> Any:
    """The DB-API module to hand ``create_async_engine(module=...)`` for a ``sqlite+aiosqlite`` URL."""
    return AsyncAdapt_aiosqlite_dbapi(_Driver("aiosqlite"), sqlite3)
