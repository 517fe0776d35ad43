"""Reads of one indexed row (or a few) on the request path, on the database driver's own connection.

Every client request reads its key (a revoked key must be refused from its next request on, on every
process), and a status read also reads its batch, so these reads are the hot path of status polling.
Through SQLAlchemy's async engine each of them paid for a pool checkout and reset, an execution context
and a result object, and on SQLite a hop to the connection's thread and back (see
:mod:`gateway.db.sqlite_driver`); on PostgreSQL, 32 concurrent status reads also opened and closed connections
beyond the pool's size. That cost several times the lookup itself. So each statement is compiled once (for the
engine's own dialect) and runs directly on one connection this object keeps, with the columns' result processors
applied (JSON decoded, booleans made booleans, as the ORM would):

* **SQLite file**: a plain synchronous, query-only connection in the event loop. In WAL mode a reader
  never waits for a writer, and an indexed lookup takes microseconds. Should the file be busy anyway (an
  outside tool holding it exclusively), the read gives up after :data:`BUSY_TIMEOUT_MS`.
* **PostgreSQL**: up to :data:`POSTGRES_CONNECTIONS` asynchronous psycopg connections in autocommit mode,
  opened only for reads that overlap. A read takes a free one, or waits its turn in order of arrival
  (each read is a round trip of a fraction of a millisecond, mostly spent waiting on the network and
  the server, so several overlap), and psycopg prepares the statements after a few uses.

Each read sees the last commit: nothing is cached. A read that fails on the direct connection (a busy
file, a lost connection) goes the ordinary way through the engine, which waits its turn or raises as any
query would, and so do the reads of the next :data:`BUSY_BACKOFF_S` seconds. The first read of a process
also goes the ordinary way, so that opening a SQLite file (and recovering its log after a crash) never
happens on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Dialect, Select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeEngine

from gateway.db.engine import sqlite_file

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 50
"""How long a read on the event loop may wait for a locked SQLite file before it takes the ordinary path."""
BUSY_BACKOFF_S = 5.0
"""After a failed direct read, how long reads take the ordinary path before they try the direct one again."""
POSTGRES_CONNECTIONS = 4
"""Direct PostgreSQL connections a process keeps for point reads: this many reads run at once."""
POSTGRES_READ_TIMEOUT_S = 2.0
"""Longest wait for a turn on the PostgreSQL connection and its answer (connecting included): a connection
that hangs without failing (dropped silently by the network) must not hold every request of the process."""


class _TakeOrdinaryPath(Exception):
    """A read found the direct path backing off after another read's failure (not a failure of its own)."""


@dataclass(slots=True)
class _Compiled:
    """A statement as the database driver runs it."""

    sql: str
    positional: tuple[str, ...] | None
    """Names of the bound parameters in the order of the statement's placeholders (None: passed by name)."""
    types: tuple[TypeEngine[Any], ...]
    """The result columns' types, for the dialect."""
    dialect: Dialect
    processors: tuple[Callable[[Any], Any] | None, ...] | None = None
    """Each result column's conversion from the driver's value (None: taken as it is); set from the first
    answer's description, as SQLAlchemy does (PostgreSQL's numeric types depend on the column's type code)."""

    def arguments(self, parameters: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        return parameters if self.positional is None else [parameters[name] for name in self.positional]

    def row(self, values: Sequence[Any], description: Sequence[Any] | None) -> tuple[Any, ...]:
        if self.processors is None:
            codes = [column[1] for column in description] if description else [None] * len(self.types)
            self.processors = tuple(
                kind.dialect_impl(self.dialect).result_processor(self.dialect, code)
                for kind, code in zip(self.types, codes, strict=True)
            )
        converted = zip(self.processors, values, strict=True)
        return tuple(value if convert is None else convert(value) for convert, value in converted)


class _Slots(Generic[T]):
    """A few shared things (connections) handed out fairly: a taker that has to wait gets the next one given
    back, in order of arrival, and a free one is taken last-used first (the others may stay unopened)."""

    def __init__(self, things: list[T]) -> None:
        self._free = things
        self._waiting: collections.deque[asyncio.Future[T]] = collections.deque()

    async def take(self) -> T:
        if self._free and not self._waiting:
            return self._free.pop()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(waiter.result())  # handed over as the taker was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def give_back(self, thing: T) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(thing)
                return
        self._free.append(thing)

    def empty_free(self) -> list[T]:
        """Take every free thing out, leaving None in each one's place."""
        taken, self._free = self._free, [None] * len(self._free)  # type: ignore[list-item]
        return taken


class PointReads:
    """Runs reads of one row (or a few) for one async engine, directly on a connection of its own (see the
    module)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._file = sqlite_file(engine.url)
        self._postgres = engine.url.get_backend_name() == "postgresql"
        self._driver_errors: tuple[type[Exception], ...] = (sqlite3.Error, TimeoutError)
        """What a failed direct read raises: the driver's errors, and a read that waited too long."""
        if self._postgres:
            import psycopg  # here, not at the top: it costs every start of a process on SQLite

            self._driver_errors += (psycopg.Error,)
        self._compiled: dict[Executable, _Compiled] = {}  # by identity: a statement is kept, never rebuilt
        self._sqlite: sqlite3.Connection | None = None
        self._postgres_slots: _Slots[psycopg.AsyncConnection[Any] | None] | None = None
        """The direct connections (None: a slot whose connection is not open yet)."""
        self._postgres_loop: asyncio.AbstractEventLoop | None = None
        self._direct_from = math.inf  # the time.monotonic() from which reads may take the direct path

    async def first(self, statement: Executable, parameters: dict[str, Any] | None = None) -> Sequence[Any] | None:
        """The first row ``statement`` returns (with ``parameters`` for its bound parameters), or None.

        ``statement`` is built once and kept (a module constant): its compiled form is remembered with it.
        """
        rows = await self._read(statement, parameters or {}, many=False)
        return rows[0] if rows else None

    async def all(self, statement: Executable, parameters: dict[str, Any] | None = None) -> list[Sequence[Any]]:
        """Every row ``statement`` returns, as :meth:`first` reads one: for a few rows found by an index."""
        return await self._read(statement, parameters or {}, many=True)

    async def _read(self, statement: Executable, parameters: dict[str, Any], *, many: bool) -> list[Sequence[Any]]:
        if self.direct and time.monotonic() >= self._direct_from:
            compiled = self._compiled.get(statement)
            if compiled is None:
                compiled = self._compiled[statement] = self._compile(statement)
            try:
                if self._file is not None:
                    return self._read_sqlite(compiled, parameters, many)
                async with asyncio.timeout(POSTGRES_READ_TIMEOUT_S):
                    return await self._read_postgres(compiled, parameters, many)
            except _TakeOrdinaryPath:
                pass
            except self._driver_errors as exc:
                self._direct_from = time.monotonic() + BUSY_BACKOFF_S
                await self._drop_postgres_connections()
                # The class only for the driver's errors: a refused connection string can quote the password.
                detail = exc if isinstance(exc, sqlite3.Error) else type(exc).__name__
                log.info("point reads take the ordinary path for %.0fs: %s", BUSY_BACKOFF_S, detail)
        async with self.engine.connect() as connection:
            result = await connection.execute(statement, parameters)
            if many:
                rows: list[Sequence[Any]] = list(result.all())
            else:
                rows = [row] if (row := result.first()) is not None else []
        if self._direct_from == math.inf:
            self._direct_from = 0.0  # the database is open (a SQLite file recovered): reads may go direct now
        return rows

    @property
    def over_network(self) -> bool:
        """True when each read is a round trip to a database server (PostgreSQL), not a lookup in a local file."""
        return self._postgres

    @property
    def direct(self) -> bool:
        """True when reads run on a connection of this object's (a SQLite file or PostgreSQL)."""
        return self._file is not None or self._postgres

    def _compile(self, statement: Executable) -> _Compiled:
        assert isinstance(statement, Select), "a point read is a SELECT"
        dialect = self.engine.dialect
        compiled = statement.compile(dialect=dialect)
        for bind in compiled.binds.values():
            # Parameters are handed to the driver as given: no fixed values, conversions or IN-list expansion.
            assert bind.value is None and not bind.expanding, f"parameter {bind.key} must be a plain bindparam"
            assert bind.type.dialect_impl(dialect).bind_processor(dialect) is None, f"parameter {bind.key}"
        types = tuple(column.type for column in statement.selected_columns)
        positional = tuple(compiled.positiontup or ()) if dialect.positional else None
        return _Compiled(compiled.string, positional, types, dialect)

    def _read_sqlite(self, compiled: _Compiled, parameters: Mapping[str, Any], many: bool) -> list[Sequence[Any]]:
        if self._sqlite is None:
            assert self._file is not None
            # Autocommit: a read takes its snapshot and lets it go, never holding a transaction open.
            self._sqlite = sqlite3.connect(self._file, check_same_thread=False, isolation_level=None)
            self._sqlite.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._sqlite.execute("PRAGMA query_only=ON")
        cursor = self._sqlite.execute(compiled.sql, compiled.arguments(parameters))
        try:
            found = cursor.fetchall() if many else cursor.fetchmany(1)
            return [compiled.row(values, cursor.description) for values in found]
        finally:
            cursor.close()  # ends the statement, and with it the read's snapshot of the file

    async def _read_postgres(
        self, compiled: _Compiled, parameters: Mapping[str, Any], many: bool
    ) -> list[Sequence[Any]]:
        loop = asyncio.get_running_loop()
        if self._postgres_loop is not loop or self._postgres_slots is None:
            # A connection belongs to the event loop it was opened on; a new loop (a restarted test
            # context) gets its own, and the old ones are left to be collected with their loop.
            self._postgres_slots, self._postgres_loop = _Slots([None] * POSTGRES_CONNECTIONS), loop
        slots = self._postgres_slots
        connection = await slots.take()
        kept = False
        try:
            if time.monotonic() < self._direct_from:
                kept = True
                raise _TakeOrdinaryPath  # a read failed while this one waited for a connection
            if connection is None or connection.closed:
                # The engine's own connection arguments (hosts, options, the password as given), not a URL
                # string: libpq would refuse one whose password holds a space.
                args, options = self.engine.dialect.create_connect_args(self.engine.url)
                import psycopg

                connection = await psycopg.AsyncConnection.connect(*args, **options, autocommit=True)
            cursor = await connection.execute(compiled.sql, compiled.arguments(parameters))
            found = await (cursor.fetchall() if many else cursor.fetchmany(1))
            kept = True
        finally:
            if connection is not None and (not kept or slots is not self._postgres_slots):
                # Failed or cut short (a timeout) mid-read, its state unknown, or the reads were closed meanwhile:
                # the slot opens a new connection if it is used again.
                slots.give_back(None)
                await self._close_quietly(connection)
            else:
                slots.give_back(connection)
        return [compiled.row(values, cursor.description) for values in found]

    async def _close_quietly(self, connection: psycopg.AsyncConnection[Any]) -> None:
        if self._postgres_loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(POSTGRES_READ_TIMEOUT_S):
                    await connection.close()

    async def _drop_postgres_connections(self) -> None:
        """Close the connections no read is using (one in use is closed if its read fails)."""
        if self._postgres_slots is None:
            return
        for connection in self._postgres_slots.empty_free():
            if connection is not None:
                await self._close_quietly(connection)

    async def close(self) -> None:
        """Close the direct connections (a later read opens them again; one in use is closed when its read ends)."""
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        # Detached first: a read that starts while the free connections close opens (and closes) its own.
        slots, self._postgres_slots = self._postgres_slots, None
        for connection in slots.empty_free() if slots is not None else []:
            if connection is not None:
                await self._close_quietly(connection)
