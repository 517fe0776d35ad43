"""Single-row reads on the request path: what they read is the database's state at that moment (no cache),
and on SQLite a locked file makes the read wait its turn on the asynchronous path instead of failing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event, func, literal_column, text, update
from sqlalchemy import inspect as sa_inspect
from sqlmodel import col, select

from gateway.db import point_reads, repo
from gateway.db import shards as shard_db
from gateway.db.engine import create_engine
from gateway.db.models import ApiKey, Batch, Shard
from gateway.db.point_reads import POSTGRES_CONNECTIONS, PointReads, _Slots
from gateway.db.unit_of_work import transaction
from tests.conftest import migrated_context
from tests.db import key_and_batch


async def _reads(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        async with transaction(context.sessions) as session:
            secret, key, batch = await key_and_batch(
                session, metadata_={"project": "p1"}, errors=[{"code": "x", "line": 3}]
            )
        statements: list[str] = []
        event.listen(context.engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        presented = await repo.authenticate(context.point_reads, secret)
        assert presented is not None and presented.revoked_at is None and presented.team_name == "readers"
        assert len(statements) == 1, "the first read opens the file on the asynchronous path"
        assert await repo.authenticate(context.point_reads, secret + "x") is None

        read = await repo.read_batch(context.point_reads, key.team_id, batch.id)
        assert read is not None
        assert (read.id, read.metadata_, read.errors, read.status) == (
            batch.id,
            {"project": "p1"},
            batch.errors,
            "validating",
        )
        assert await repo.read_batch(context.point_reads, "another-team", batch.id) is None
        with_key = await repo.read_batch_with_key(context.point_reads, secret, batch.id)
        assert with_key is not None and with_key[0] == presented
        assert await repo.read_batch_with_key(context.point_reads, secret + "x", batch.id) is None
        assert await repo.read_batch_with_key(context.point_reads, secret, batch.id + "x") is None
        # The later reads ran on the direct connection, not through the async engine.
        assert len(statements) == 1
        async with transaction(context.sessions) as session:
            other_secret, _ = await repo.create_api_key(session, "others")
            loaded = (await session.exec(select(Batch).where(col(Batch.id) == batch.id))).one()
            # Every column as the ORM loads it (JSON decoded, numbers and booleans typed), on either path.
            columns = [attribute.key for attribute in sa_inspect(Batch).column_attrs]
            expected = {name: getattr(loaded, name) for name in columns}
            for shown in (read, with_key[1]):
                assert {name: getattr(shown, name) for name in columns} == expected
                assert {name: type(getattr(shown, name)) for name in columns} == {
                    name: type(value) for name, value in expected.items()
                }, "a Decimal for a float would compare equal"
        assert await repo.read_batch_with_key(context.point_reads, other_secret, batch.id) is None, "another team's"

        # A write committed by any connection is what the next read sees: a revocation holds at once.
        async with transaction(context.sessions) as session:
            row = (await session.exec(select(ApiKey).where(col(ApiKey.id) == key.id))).one()
            row.revoked_at = int(time.time())
        presented = await repo.authenticate(context.point_reads, secret)
        assert presented is not None and presented.revoked_at is not None

        if database_kind == "postgresql":
            # The server ends every other connection of the database (a restart, a failover): the next read
            # still answers, through the engine, whose pool checks its connections before use.
            args, options = context.engine.dialect.create_connect_args(context.engine.url)
            async with await psycopg.AsyncConnection.connect(*args, **options, autocommit=True) as admin:
                ended = await admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                assert (await ended.fetchone()) == (2,), "the engine's pooled connection and the direct one"
            before = len(statements)
            presented = await repo.authenticate(context.point_reads, secret)
            assert presented is not None and presented.key_id == key.id
            assert len(statements) == before + 1, "the failed direct read went the ordinary way"

        if database_kind == "sqlite":
            # Another process holds the file exclusively: the read waits for it rather than failing.
            await context.engine.dispose()  # so that nothing of this process keeps the file open
            await context.point_reads.close()
            blocker = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
            blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
            blocker.execute("BEGIN EXCLUSIVE")
            gaps: list[float] = []
            thread_gaps: list[float] = []
            thread_stop = threading.Event()

            async def ticker() -> None:  # how long the event loop was held at a time
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            def thread_ticker() -> None:  # the same beside the loop: it stalls too when the whole process is not run
                last = time.monotonic()
                while not thread_stop.wait(0.01):
                    thread_gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            beside = threading.Thread(target=thread_ticker, daemon=True)
            beside.start()
            ticking = asyncio.create_task(ticker())
            pending = asyncio.create_task(repo.read_batch(context.point_reads, key.team_id, batch.id))
            await asyncio.sleep(0.5)
            assert not pending.done(), "the read waits for the lock"
            blocker.execute("ROLLBACK")
            blocker.close()
            read = await asyncio.wait_for(pending, 10)
            ticking.cancel()
            thread_stop.set()
            beside.join()
            assert read is not None and read.id == batch.id
            # A read waiting on the loop holds the loop alone (SQLite waits without the GIL); on a busy machine the
            # whole process may not run for a moment, which the thread beside the loop sees as well.
            held = max(gaps) - max(thread_gaps)
            beside_s = max(thread_gaps)
            assert held < 0.25, f"the event loop was held {max(gaps):.3f}s, the thread beside it {beside_s:.3f}s"
            # For a while after a locked file, reads go the asynchronous way.
            before = len(statements)
            assert await repo.authenticate(context.point_reads, secret) is not None
            assert len(statements) == before + 1


def test_point_reads_see_every_commit_and_wait_out_a_locked_file(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_reads(database_kind, tmp_path))


async def _password_with_a_space(tmp_path: Path) -> list[str]:
    async with migrated_context("postgresql", tmp_path) as context:
        async with transaction(context.sessions) as session:
            secret, _ = await repo.create_api_key(session, "readers")
        # The test server trusts local connections, so any password is accepted: what matters is the string.
        engine = create_engine(context.engine.url.set(password="my secret pw").render_as_string(hide_password=False))
        reads = PointReads(engine)
        statements: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        try:
            for _ in range(3):
                assert await repo.authenticate(reads, secret) is not None
        finally:
            await reads.close()
            await engine.dispose()
        return statements


def test_a_postgresql_password_with_a_space_reaches_the_direct_connection_and_no_log(
    database_kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if database_kind != "postgresql":
        pytest.skip("a PostgreSQL connection's arguments")
    with caplog.at_level(logging.DEBUG):
        statements = asyncio.run(_password_with_a_space(tmp_path))
    assert len(statements) == 1, "only the first read goes through the engine; the others went direct"
    assert "secret pw" not in caplog.text


async def _open_shard_waits(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        async with transaction(context.sessions) as session:
            _, _, batch = await key_and_batch(session)
            later = "bench is rate limiting batch creates: next try at 10:00:09 UTC"
            sooner = "bench is rate limiting batch creates: next try at 10:00:01 UTC"
            shards = [
                ("running", None, None),
                ("done", None, None),
                ("queued", "rate_limited", later),
                ("held", "canary_hold", None),
                ("queued", "rate_limited", sooner),
                ("running", None, None),
            ]
            for seq, (state, code, detail) in enumerate(shards):
                shard = Shard(batch_id=batch.id, seq=seq, provider="bench", model="m", provider_model="m")
                shard.input_key, shard.state, shard.wait_code, shard.wait_detail = f"in/{seq}", state, code, detail
                session.add(shard)
        statements: list[str] = []
        event.listen(context.engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        ordinary = await shard_db.open_shard_waits(context.point_reads, batch.id)
        assert len(statements) == 1, "the first read of a process goes through the engine"
        direct = await shard_db.open_shard_waits(context.point_reads, batch.id)
        assert len(statements) == 1, "the next one on the direct connection"
        async with transaction(context.sessions) as session:
            through_session = await shard_db.open_shard_waits(session, batch.id)
        # Grouped by state and wait: a count each, and the group's first detail in text order.
        expected = sorted(
            [("held", "canary_hold", None, 1), ("queued", "rate_limited", sooner, 2), ("running", None, None, 2)]
        )
        assert sorted(ordinary) == sorted(direct) == sorted(through_session) == expected
        assert await shard_db.open_shard_waits(context.point_reads, "batch_none") == []


def test_the_open_shards_of_a_status_read_are_read_directly_and_as_a_session_reads_them(
    database_kind: str, tmp_path: Path
) -> None:
    asyncio.run(_open_shard_waits(database_kind, tmp_path))


SLOW_READ = select(func.pg_backend_pid(), func.pg_sleep(literal_column("0.2")))
"""A read that holds its connection for 0.2 s, and names the server process that answered it."""
BACKEND = select(func.pg_backend_pid())


async def _overlapping_reads(tmp_path: Path) -> None:
    async with migrated_context("postgresql", tmp_path) as context:
        reads = context.point_reads
        await reads.first(BACKEND)  # the first read of a process goes through the engine
        # Open every direct connection first: the timing below is of the reads, not of connecting (which a loaded
        # machine can stretch by a few hundred ms).
        await asyncio.gather(*(reads.first(SLOW_READ) for _ in range(POSTGRES_CONNECTIONS)))
        started = time.monotonic()
        answers = await asyncio.gather(*(reads.first(SLOW_READ) for _ in range(2 * POSTGRES_CONNECTIONS)))
        elapsed = time.monotonic() - started
        backends = {answer[0] for answer in answers if answer is not None}
        assert len(backends) == POSTGRES_CONNECTIONS, "every read took one of the process's direct connections"
        # Two rounds of 0.2 s: no more reads run at once than there are connections, and they overlap (one
        # connection would take eight rounds, 1.6 s).
        assert 0.4 <= elapsed < 1.2, elapsed

        # A connection the server ends: the read on it takes the ordinary path, and the direct path comes back.
        async with context.engine.connect() as connection:
            for pid in backends:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert await reads.first(BACKEND) is not None
        await asyncio.sleep(point_reads.BUSY_BACKOFF_S)  # the back-off after the failure
        through_engine: list[str] = []
        event.listen(context.engine.sync_engine, "before_cursor_execute", lambda *args: through_engine.append(args[2]))
        fresh = {(await reads.first(BACKEND) or [None])[0] for _ in range(3)}
        assert through_engine == [], "the reads went direct again"
        assert len(fresh) == 1 and not fresh & backends, "on a new connection, which replaced the ended ones"


def test_postgresql_point_reads_overlap_on_a_few_connections_and_replace_an_ended_one(
    database_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if database_kind != "postgresql":
        pytest.skip("the direct connections of PostgreSQL")
    monkeypatch.setattr(point_reads, "BUSY_BACKOFF_S", 0.2)
    asyncio.run(_overlapping_reads(tmp_path))


async def _slots_in_order() -> None:
    slots = _Slots(["one", "two"])
    assert {await slots.take(), await slots.take()} == {"one", "two"}
    order: list[str] = []

    async def taker(name: str) -> None:
        thing = await slots.take()
        order.append(f"{name}:{thing}")

    first, cancelled, third = (asyncio.create_task(taker(name)) for name in ("first", "cancelled", "third"))
    await asyncio.sleep(0)  # all three wait, in this order
    cancelled.cancel()
    slots.give_back("one")
    late = asyncio.create_task(taker("late"))  # arrives after the hand-over: it must not take "one"
    slots.give_back("two")
    await asyncio.gather(first, third, return_exceptions=True)
    assert order == ["first:one", "third:two"], "handed out in order of arrival; the cancelled taker passed"
    assert not late.done(), "a late taker waits its turn rather than barging in"
    slots.give_back("one")
    await late
    assert order[-1] == "late:one"


def test_connections_are_handed_out_in_order_of_arrival() -> None:
    asyncio.run(_slots_in_order())


async def _status_read_with_open_shards(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        async with transaction(context.sessions) as session:
            secret, _, batch = await key_and_batch(session, stage="run", status="in_progress")
            for seq, (state, code) in enumerate([("running", None), ("done", None), ("queued", "rate_limited")] * 2):
                shard = Shard(batch_id=batch.id, seq=seq, provider="p", model="m", provider_model="m")
                shard.input_key, shard.state, shard.wait_code = f"in/{seq}", state, code
                session.add(shard)
        async with transaction(context.sessions) as session:
            stamps = (await session.exec(select(Shard.updated_at).where(col(Shard.state) != "done"))).all()
        for _ in range(2):  # the ordinary path (a process's first read), then the direct one
            found = await repo.read_batch_with_key(context.point_reads, secret, batch.id)
            assert found is not None
            _key, shown, open_shards, version = found
            assert shown.id == batch.id and shown.stage == "run"
            assert sorted(open_shards) == [("queued", "rate_limited", None, 2), ("running", None, None, 2)]
            assert sorted(open_shards) == sorted(await shard_db.open_shard_waits(context.point_reads, batch.id))
            assert version == (shown.updated_at, 4, max(stamps)), "the batch's stamp, its open shards and their latest"
            checked = await repo.read_key_and_batch_version(context.point_reads, secret, batch.id)
            assert checked is not None and checked[1] == version, "the version check reads the same version"

        async def version_now() -> repo.BatchVersion:
            checked = await repo.read_key_and_batch_version(context.point_reads, secret, batch.id)
            assert checked is not None
            return checked[1]

        for values, case in (
            ({"wait_detail": "a new wait", "updated_at": max(stamps) + 1}, "a stamped shard"),
            ({"state": "done", "updated_at": 1.0}, "a shard that closed"),
        ):
            before = await version_now()
            async with transaction(context.sessions) as session:
                first = (await session.exec(select(Shard).where(col(Shard.state) == "running"))).first()
                assert first is not None
                await session.exec(update(Shard).where(col(Shard.id) == first.id).values(**values))
            assert await version_now() != before, f"{case} changes the version"
        # A finished batch reads no shards, even one left unfinished, and its version counts none.
        async with transaction(context.sessions) as session:
            await session.exec(update(Batch).where(col(Batch.id) == batch.id).values(stage="done", status="failed"))
        found = await repo.read_batch_with_key(context.point_reads, secret, batch.id)
        assert found is not None and found[2] == [] and found[1].stage == "done"
        assert found[3] == (found[1].updated_at, 0, None) == await version_now()


def test_a_status_read_gets_the_key_the_batch_and_its_open_shards_together(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_status_read_with_open_shards(database_kind, tmp_path))
