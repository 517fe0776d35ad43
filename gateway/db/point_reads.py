"""Reads of one indexed row on the request path, without a thread hop where the database allows it.

Every client request reads its key (a revoked key must be refused from its next request on, on every
process), so that read is on the hot path of status polling. Through aiosqlite each statement of it
crosses to the driver's thread and back several times (checkout, execute, fetch, close, reset), which
costs more than the lookup itself. On a SQLite file these reads run on a plain synchronous connection
in the event loop instead: in WAL mode a reader never waits for a writer, and an indexed lookup takes
microseconds. Should the file be busy anyway (a recovery after a crash), the read gives up after
:data:`BUSY_TIMEOUT_MS` and goes the asynchronous way, which waits its turn. PostgreSQL reads are
asynchronous already and always take the ordinary path.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, Row, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 50
"""How long a read on the event loop may wait for a locked file before it takes the asynchronous path."""


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
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            self._sync = create_sync_engine(
                url.set(drivername="sqlite"), pool_size=1, max_overflow=4, connect_args={"check_same_thread": False}
            )
            event.listen(self._sync, "connect", _read_only)

    async def first(self, statement: Executable, parameters: dict[str, Any] | None = None) -> Row[Any] | None:
        """The first row ``statement`` returns (with ``parameters`` for its bound parameters), or None."""
        if self._sync is not None:
            try:
                with self._sync.connect() as connection:
                    return connection.execute(statement, parameters).first()
            except OperationalError as exc:
                log.debug("point read on the event loop gave way to the async path: %s", exc)
        async with self.engine.connect() as connection:
            return (await connection.execute(statement, parameters)).first()

    def close(self) -> None:
        """Close the synchronous connections."""
        if self._sync is not None:
            self._sync.dispose()
