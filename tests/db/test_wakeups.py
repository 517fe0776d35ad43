"""When the next work falls due, and wake-ups between processes: PostgreSQL's LISTEN/NOTIFY, Unix sockets on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlmodel import text

from gateway.context import GatewayContext
from gateway.db import local_wakeups, repo, wakeups
from gateway.db.engine import create_engine
from gateway.db.models import Batch, Shard, StoredFile
from gateway.settings import Settings
from tests.conftest import FreshDatabase, migrated_context


async def _due(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        now = time.time()
        async with context.sessions() as session:
            assert await wakeups.next_due_at(session, ["validate"], ["running"]) is None
            _secret, key = await repo.create_api_key(session, "due")
            stored = StoredFile(team_id=key.team_id, filename="in.jsonl", purpose="batch", storage_key="files/x")
            session.add(stored)
            batch = Batch(
                team_id=key.team_id,
                input_file_id=stored.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                stage="validate",
                next_action_at=now + 100,
            )
            session.add(batch)
            await session.flush()
            polled = Shard(
                batch_id=batch.id, seq=0, provider="p", model="m", provider_model="m", input_key="k0",
                state="running", next_action_at=now + 50,
            )  # fmt: skip
            leased = Shard(
                batch_id=batch.id, seq=1, provider="p", model="m", provider_model="m", input_key="k1",
                state="running", next_action_at=now + 10, lease_owner="other", lease_expires_at=now + 30,
            )  # fmt: skip
            done = Shard(
                batch_id=batch.id, seq=2, provider="p", model="m", provider_model="m", input_key="k2",
                state="done", next_action_at=now,
            )  # fmt: skip
            session.add_all([polled, leased, done])
            await session.commit()

            # Another worker's lease holds the shard due at +10 s until +30 s; a done shard is never due.
            assert await wakeups.next_due_at(session, [], ["running"]) == pytest.approx(now + 30)
            assert await wakeups.next_due_at(session, ["validate"], []) == pytest.approx(now + 100)
            assert await wakeups.next_due_at(session, ["route"], ["queued"]) is None


def test_next_due_is_the_earliest_claimable_time(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_due(database_kind, tmp_path))


def test_seconds_until_is_bounded() -> None:
    assert wakeups.seconds_until(None, 5.0) == 5.0
    assert wakeups.seconds_until(time.time() - 3, 5.0) == 0.0
    assert wakeups.seconds_until(time.time() + 60, 5.0) == 5.0
    assert 1.5 < wakeups.seconds_until(time.time() + 2, 5.0) <= 2.0


async def _notified(tmp_path: Path) -> None:
    database = FreshDatabase.create("postgresql", tmp_path)
    settings = Settings(data_dir=tmp_path, database_url=database.url)
    context = GatewayContext.create(settings)
    stop, woken = asyncio.Event(), asyncio.Event()
    wakes: list[float] = []

    def on_wake() -> None:
        wakes.append(time.monotonic())
        woken.set()

    listener = asyncio.create_task(wakeups.listen(context.engine, on_wake, stop))
    try:
        await asyncio.wait_for(woken.wait(), 10)  # connected (a wake on every connect)
        connected = len(wakes)

        async def send(payload: str) -> None:
            async with context.engine.connect() as connection:
                await connection.execute(text("SELECT pg_notify(:c, :p)"), {"c": wakeups.CHANNEL, "p": payload})
                await connection.commit()

        await send(wakeups.PROCESS_TOKEN)  # this process's own announcement: its loops were woken directly
        await asyncio.sleep(1.5)
        assert len(wakes) == connected, "a process is not woken by its own announcement"
        woken.clear()
        sent = time.monotonic()
        await send("another-process")
        await asyncio.wait_for(woken.wait(), 5)
        assert len(wakes) == connected + 1
        print(f"notification heard {wakes[-1] - sent:.3f}s after it was sent")
        # Through the context's work signal, as a stage hand-off does it.
        woken.clear()
        received: list[str] = []

        async def spy() -> None:
            conninfo = wakeups.conninfo(context.engine)
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
                await connection.execute(f"LISTEN {wakeups.CHANNEL}")
                ready.set()
                async for message in connection.notifies(timeout=2):
                    received.append(message.payload)

        ready = asyncio.Event()
        spying = asyncio.create_task(spy())
        await asyncio.wait_for(ready.wait(), 5)
        for _ in range(20):
            context.work_available.set()  # twenty hand-offs at once: folded into one or two announcements
        await spying
        assert received and set(received) == {wakeups.PROCESS_TOKEN}
        assert len(received) <= 2, f"{len(received)} announcements for 20 hand-offs made at once"
    finally:
        stop.set()
        await asyncio.wait_for(listener, 5)
        await context.close()
        database.drop()


def test_notifications_wake_other_processes(database_kind: str, tmp_path: Path) -> None:
    if database_kind != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    asyncio.run(_notified(tmp_path))


LISTENER = """
import asyncio, sys, time
from gateway.db import wakeups
from gateway.db.engine import create_engine

async def main() -> None:
    engine = create_engine(sys.argv[1])
    await wakeups.listen(engine, lambda: print(f"woken {time.time():.6f}", flush=True), asyncio.Event())

asyncio.run(main())
"""


def _next_wake(listener: subprocess.Popen[str], timeout: float) -> float:
    """When the listening process says it was woken next (its clock), or a failure after ``timeout``."""
    assert listener.stdout is not None
    ready, _, _ = select.select([listener.stdout], [], [], timeout)
    assert ready, f"not woken within {timeout}s"
    line = listener.stdout.readline()
    assert line.startswith("woken "), line
    return float(line.split()[1])


def test_processes_on_one_sqlite_file_wake_each_other(tmp_path: Path) -> None:
    """Two real processes on one SQLite file: an announcement reaches the other at once, and the socket of a
    process that was killed is removed by the next announcement."""
    url = Settings(data_dir=tmp_path, database_url=FreshDatabase.create("sqlite", tmp_path).url).resolved_database_url
    engine = create_engine(url)
    folder = local_wakeups.directory_for(str(tmp_path / "gateway.db"))
    assert wakeups.announces(engine) and not wakeups.notifies(engine)
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, url], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    try:
        _next_wake(listener, 30)  # listening (a wake on start: announcements before it were lost)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for _ in range(3):
            sent = time.time()
            asyncio.run(wakeups.notify(engine))
            woken = _next_wake(listener, 5)
            assert woken - sent < 1.0
            print(f"wake-up heard {woken - sent:.4f}s after it was sent")
        [socket_file] = list(folder.iterdir())
        listener.kill()
        listener.wait(10)
        assert socket_file.exists(), "a killed process leaves its socket behind"
        assert local_wakeups.announce(folder) == 0
        assert not socket_file.exists(), "the next announcement removed the socket nobody reads"
    finally:
        listener.kill()
        listener.wait(10)
        asyncio.run(engine.dispose())
        with contextlib.suppress(OSError):
            folder.rmdir()


def test_an_announcement_touches_only_a_private_folder_of_this_user(tmp_path: Path) -> None:
    """Someone else's link or an open folder in the shared temporary directory gets no datagrams, and
    nothing in it is removed."""
    target = tmp_path / "someone-elses"
    target.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(target / "important.sock"))
    stale.close()  # nobody reads it: a private folder's announcement would remove it
    link = tmp_path / "batchgw-wake-link"
    link.symlink_to(target)
    assert local_wakeups.announce(link) == 0
    assert (target / "important.sock").exists()
    target.chmod(0o755)
    assert local_wakeups.announce(target) == 0
    assert (target / "important.sock").exists()
    target.chmod(0o700)
    assert local_wakeups.announce(target) == 0
    assert not (target / "important.sock").exists(), "in a private folder a socket nobody reads is removed"
