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

On the event loop each statement is compiled once, and then runs on the driver's own connection with the
columns' result processors applied (JSON decoded, booleans made booleans): SQLAlchemy's per-execution work
(pool checkout and reset, execution context, result object) was most of a status read's remaining time.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from gateway.db.engine import sqlite_file

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 50
"""How long a read on the event loop may wait for a locked file before it takes the asynchronous path."""
BUSY_BACKOFF_S = 5.0
"""After a locked file, how long reads take the asynchronous path before they try the event loop again."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as the SQLite driver runs it."""

    sql: str
    parameters: tuple[str, ...]
    """Names of the bound parameters, in the order of the statement's placeholders."""
    processors: tuple[Callable[[Any], Any] | None, ...]
    """Each result column's conversion from the driver's value (None: taken as it is)."""

    def row(self, values: Sequence[Any]) -> tuple[Any, ...]:
        converted = zip(self.processors, values, strict=True)
        return tuple(value if convert is None else convert(value) for convert, value in converted)


class PointReads:
    """Runs single-row reads for one async engine: synchronously on a SQLite file, else through the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._file = sqlite_file(engine.url)
        self._connection: sqlite3.Connection | None = None
        self._dialect = SQLiteDialect_pysqlite()
        self._compiled: dict[Executable, _Compiled] = {}  # by identity: a statement is kept, never rebuilt
        self._sync_from = math.inf  # the time.monotonic() from which reads may run synchronously

    async def first(self, statement: Executable, parameters: dict[str, Any] | None = None) -> Sequence[Any] | None:
        """The first row ``statement`` returns (with ``parameters`` for its bound parameters), or None.

        ``statement`` is built once and kept (a module constant): its compiled form is remembered with it.
        """
        if self._file is not None and time.monotonic() >= self._sync_from:
            try:
                return self._read_on_loop(statement, parameters or {})
            except sqlite3.OperationalError as exc:
                self._sync_from = time.monotonic() + BUSY_BACKOFF_S
                log.info("database file busy: point reads take the async path for %.0fs (%s)", BUSY_BACKOFF_S, exc)
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement, parameters)).first()
        if self._sync_from == math.inf:
            self._sync_from = 0.0  # the file is open and recovered: reads may now run on the event loop
        return row

    def _read_on_loop(self, statement: Executable, parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = self._compile(statement)
        if self._connection is None:
            assert self._file is not None
            self._connection = self._open(self._file)
        cursor = self._connection.execute(compiled.sql, [parameters[name] for name in compiled.parameters])
        try:
            values = cursor.fetchone()
        finally:
            cursor.close()  # ends the statement, and with it the read's snapshot of the file
        return compiled.row(values) if values is not None else None

    def _compile(self, statement: Executable) -> _Compiled:
        assert isinstance(statement, Select), "a point read is a SELECT"
        compiled = statement.compile(dialect=self._dialect)
        processors = tuple(column.type.result_processor(self._dialect, None) for column in statement.selected_columns)
        return _Compiled(compiled.string, tuple(compiled.positiontup or ()), processors)

    @staticmethod
    def _open(file: str) -> sqlite3.Connection:
        # Autocommit: a read takes its snapshot and lets it go, never holding a transaction open between reads.
        connection = sqlite3.connect(file, check_same_thread=False, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA query_only=ON")
        return connection

    @property
    def on_loop(self) -> bool:
        """True when reads may run synchronously in the event loop (a SQLite file)."""
        return self._file is not None

    def close(self) -> None:
        """Close the synchronous connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
