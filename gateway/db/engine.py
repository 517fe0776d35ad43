"""Database engine and sessions, and schema migrations to head."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import event, pool, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway.db import sqlite_driver

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
HEAD_REVISION = "0013"
"""The newest migration in ``migrations/versions`` (``tests/db/test_migrations.py`` checks it is Alembic's head)."""


def is_sqlite(url: str) -> bool:
    """True for a SQLite URL, whatever its driver."""
    return make_url(url).get_backend_name() == "sqlite"


def sync_url(url: str) -> str:
    """The same database with a synchronous driver (for migrations)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_file(url: str | URL) -> str | None:
    """The path of a SQLite database file, or None (another database, in memory, or a ``file:`` URI)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return database


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite database file if it does not exist."""
    if (path := sqlite_file(url)) is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


IDLE_TRANSACTION_TIMEOUT_S = 10.0
"""On PostgreSQL, a session that leaves a transaction open and idle this long is ended by the server. A process frozen
mid-transaction (SIGSTOP, a VM paused) would otherwise keep its row and advisory locks, and every other process
waiting on one of them (the claim of a provider's concurrency slots, say) would wait until it woke up. The gateway's
transactions never wait on anything but the database, so only a frozen or stuck process reaches it."""


def create_engine(url: str, *, idle_transaction_timeout_s: float = IDLE_TRANSACTION_TIMEOUT_S) -> AsyncEngine:
    """An async engine with the pragmas and pool settings this gateway relies on."""
    ensure_sqlite_dir(url)
    if is_sqlite(url):
        module = sqlite_driver.dbapi() if make_url(url).get_driver_name() == "aiosqlite" else None
        engine = create_async_engine(url, connect_args={"timeout": 30}, module=module)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    timeout_ms = round(idle_transaction_timeout_s * 1000)
    options = {"options": f"-c idle_in_transaction_session_timeout={timeout_ms}"}
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=options)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


CONNECT_TIMEOUT_S = 10
"""Longest wait for a database server's first answer when a process starts."""


class DatabaseUnreachable(ConnectionError):
    """The database server did not take a connection when a process started (down, a wrong address or name,
    refused credentials): one line, the password hidden."""


def check_reachable(url: str) -> None:
    """Connect to a database server once; raise :class:`DatabaseUnreachable` when it does not answer. SQLite, a
    local file made when needed, is not checked."""
    if is_sqlite(url):
        return
    engine = sqlalchemy.create_engine(
        sync_url(url), poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        where = make_url(url).render_as_string(hide_password=True)
        raise DatabaseUnreachable(f"cannot reach the database at {where}: {reason[:400]}") from None
    finally:
        engine.dispose()


def at_head(url: str) -> bool:
    """True when the database already carries the newest migration, read with one query.

    Every process start checks this (``auto_migrate``), and starting Alembic costs more than the rest of that
    check (about 0.3 s of CPU): a database at head is left alone without it. Any doubt (no such table, an
    older or unknown revision, an error) answers False, and Alembic decides.
    """
    engine = sqlalchemy.create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()
    return list(versions) == [HEAD_REVISION]


def upgrade_to_head(url: str) -> None:
    """Apply every migration not yet applied (blocking; run it before serving)."""
    ensure_sqlite_dir(url)
    if at_head(url):
        return
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def dialect_insert(session: AsyncSession) -> Any:
    """The ``insert`` of the session's database, whose ``on_conflict_do_nothing`` / ``_do_update`` the
    upserts use (PostgreSQL's, else SQLite's: the two databases the gateway runs on)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert
