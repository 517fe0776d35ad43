"""The SQLite driver of the async engine: one call on the connection's thread per statement, with what
SQLAlchemy reads from a cursor (rows, row counts, RETURNING, errors, transactions) as aiosqlite gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_engine, session_factory


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE, owner TEXT)"))
        await connection.execute(text("INSERT INTO items (name, owner) VALUES ('a', 'w1'), ('b', 'w1'), ('c', 'w2')"))
    yield engine
    await engine.dispose()


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call an aiosqlite connection queues for its thread, as it is queued."""
    calls: list[object] = []
    queue_call = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await queue_call(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


async def test_a_statement_is_one_call_on_the_connections_thread(
    engine: AsyncEngine, thread_calls: list[object]
) -> None:
    async with session_factory(engine)() as session:
        await session.execute(text("SELECT 1"))  # the connection is opened and its transaction begun
        thread_calls.clear()
        rows = (await session.execute(text("SELECT name FROM items ORDER BY name"))).all()
        assert len(thread_calls) == 1
        thread_calls.clear()
        await session.execute(text("UPDATE items SET owner = 'w3' WHERE name = 'a'"))
        assert len(thread_calls) == 1
    assert [row.name for row in rows] == ["a", "b", "c"]


async def test_an_update_counts_the_rows_it_changed(engine: AsyncEngine) -> None:
    """Leases are fenced by ``UPDATE ... WHERE lease_token = ...`` and its row count."""
    async with engine.begin() as connection:
        changed = await connection.execute(text("UPDATE items SET owner = 'w9' WHERE owner = 'w1'"))
        unchanged = await connection.execute(text("UPDATE items SET owner = 'w9' WHERE owner = 'nobody'"))
        assert (changed.rowcount, unchanged.rowcount) == (2, 0)


async def test_returning_gives_its_rows_and_an_insert_its_row_id(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        returned = await connection.execute(text("UPDATE items SET owner = 'w5' WHERE owner = 'w1' RETURNING name"))
        assert sorted(row.name for row in returned) == ["a", "b"]
        inserted = await connection.execute(text("INSERT INTO items (name, owner) VALUES ('d', 'w4')"))
        assert inserted.lastrowid == 4


async def test_a_failed_statement_raises_sqlalchemys_error_and_the_session_goes_on(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session:
        with pytest.raises(IntegrityError):
            await session.execute(text("INSERT INTO items (name, owner) VALUES ('a', 'w1')"))
        await session.rollback()
        with pytest.raises(OperationalError, match="no such table"):
            await session.execute(text("SELECT * FROM missing"))
        await session.rollback()
        count = (await session.execute(text("SELECT count(*) FROM items"))).scalar_one()
    assert count == 3


async def test_a_rolled_back_transaction_leaves_nothing_and_a_committed_one_stays(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as session:
        await session.execute(text("INSERT INTO items (name, owner) VALUES ('gone', 'w1')"))
        await session.rollback()
        await session.execute(text("INSERT INTO items (name, owner) VALUES ('kept', 'w1')"))
        await session.commit()
    async with sessions() as session:
        names = (await session.execute(text("SELECT name FROM items WHERE name IN ('gone', 'kept')"))).scalars().all()
    assert names == ["kept"]
