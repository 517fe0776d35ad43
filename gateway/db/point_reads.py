"""Reads of one indexed row on the request path, without a thread hop where the database allows it.

Every client request reads its key (a revoked key must be refused from its next request on, on every
process), so that read is on the hot path of status polling. Through aiosqlite each statement of it
crosses to the driver's thread and back several times (checkout, execute, fetch, close, reset), which
costs more than the lookup itself. On a SQLite file these reads run on a plain synchronous connection
in the event loop instead: in WAL mode a reader never waits for a writer, and an indexed lookup takes
microseconds. Should the file be busy anyway (an outside tool holding it exclusively), the read gives up
after :data:`BUSY_TIMEOUT_MS` and goes the asynchronous way, which waits its turn, and so do the reads of
the next :data:`BUSY_BACKOFF_S` seconds. The first read of a process also goes the asynchronous way, so
that opening the file (and recovering its log after a crash) never happens on the event loop.
PostgreSQL reads are asynchronous already and always take the ordinary path.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from sqlalchemy import Engine, Row, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from gateway.db.engine import sqlite_file

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 50
"""How long a read on the event loop may wait for a locked file before it takes the asynchronous path."""
BUSY_BACKOFF_S = 5.0
"""After a locked file, how long reads take the asynchronous path before they try the event loop again."""


def _read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


class PointReads:
    """Runs single-row reads for one async engine: synchronously on a SQLite file, else through the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync: Engine | None = None
        self._sync_from = math.inf  # the time.monotonic() from which reads may run synchronously
        if sqlite_file(engine.url) is not None:
            self._sync = create_sync_engine(
                engine.url.set(drivername="sqlite"),
                pool_size=1,
                max_overflow=4,
                connect_args={"check_same_thread": False},
            )
            event.listen(self._sync, "connect", _read_only)

    async def first(self, statement: Executable, parameters: dict[str, Any] | None = None) -> Row[Any] | None:
        """The first row ``statement`` returns (with ``parameters`` for its bound parameters), or None."""
        if self._sync is not None and time.monotonic() >= self._sync_from:
            try:
                with self._sync.connect() as connection:
                    return connection.execute(statement, parameters).first()
            except OperationalError as exc:
                self._sync_from = time.monotonic() + BUSY_BACKOFF_S
                log.info("database file busy: point reads take the async path for %.0fs (%s)", BUSY_BACKOFF_S, exc)
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement, parameters)).first()
        if self._sync_from == math.inf:
            self._sync_from = 0.0  # the file is open and recovered: reads may now run on the event loop
        return row

    @property
    def on_loop(self) -> bool:
        """True when reads may run synchronously in the event loop (a SQLite file)."""
        return self._sync is not None

    def close(self) -> None:
        """Close the synchronous connections."""
        if self._sync is not None:
            self._sync.dispose()
