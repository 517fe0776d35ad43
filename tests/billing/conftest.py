"""Fixtures of the billing tests: a fresh migrated database per test and helpers that seed it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.engine import create_engine
from gateway.db.models import Batch, LedgerEntry, Shard, Team
from gateway.settings import async_database_url
from tests.conftest import FreshDatabase

Sessions = async_sessionmaker[AsyncSession]


@dataclass
class Seeder:
    """Writes teams, batches and ledger rows, each in its own committed transaction."""

    sessions: Sessions
    url: str

    async def team(self, name: str) -> str:
        async with self.sessions() as session:
            team = Team(name=name)
            session.add(team)
            await session.commit()
            return team.id

    async def batch(
        self,
        team_id: str,
        *,
        status: str = "in_progress",
        estimated: float | None = None,
        cost: float = 0.0,
        request_total: int = 100,
    ) -> str:
        async with self.sessions() as session:
            batch = Batch(
                team_id=team_id,
                input_file_id="file-x",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                status=status,
                estimated_cost_usd=estimated,
                cost_usd=cost,
                request_total=request_total,
            )
            session.add(batch)
            await session.commit()
            return batch.id

    async def shard(
        self,
        batch_id: str,
        *,
        seq: int,
        state: str = "queued",
        estimated: float = 0.0,
        requests: int = 10,
        completed: int = 0,
        rates: tuple[float, float] = (1.0, 1.0),
    ) -> str:
        """A shard of the batch, estimated at ``estimated`` USD for its ``requests``."""
        async with self.sessions() as session:
            shard = Shard(
                batch_id=batch_id,
                seq=seq,
                provider="fast",
                model="gpt-4o-mini",
                provider_model="gpt-4o-mini",
                state=state,
                request_count=requests,
                result_completed=completed,
                estimated_cost_usd=estimated,
                estimated_input_tokens=requests * 100,
                estimated_output_tokens=requests * 10,
                input_per_mtok=rates[0],
                output_per_mtok=rates[1],
                input_key=f"shards/{batch_id}/{seq}",
            )
            session.add(shard)
            await session.commit()
            return shard.id

    async def spend(
        self,
        team_id: str,
        batch_id: str,
        cost: float,
        *,
        requests: int = 10,
        at: float | None = None,
        provider: str = "fast",
        model: str = "gpt-4o-mini",
        list_cost: float | None = None,
        shard_id: str | None = None,
    ) -> None:
        """A ledger row, as the engine writes one when it collects a shard."""
        async with self.sessions() as session:
            session.add(
                LedgerEntry(
                    shard_id=shard_id or f"shard_{time.monotonic_ns()}",
                    batch_id=batch_id,
                    team_id=team_id,
                    provider=provider,
                    model=model,
                    provider_model=model,
                    mode="batch",
                    requests=requests,
                    input_tokens=requests * 100,
                    output_tokens=requests * 10,
                    cost_usd=cost,
                    list_cost_usd=cost * 2 if list_cost is None else list_cost,
                    created_at=time.time() if at is None else at,
                )
            )
            await session.commit()


@pytest.fixture
async def seed(database_kind: str, tmp_path: Path) -> AsyncIterator[Seeder]:
    """A freshly migrated database (SQLite, and PostgreSQL when configured) with a seeding helper."""
    database = FreshDatabase.create(database_kind, tmp_path, migrated=True)
    url = async_database_url(database.url)
    engine = create_engine(url)
    try:
        yield Seeder(async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False), database.url)
    finally:
        await engine.dispose()
        database.drop()


class Receiver:
    """An HTTP server answering 500 to the first ``fail_first`` POSTs and 200 after."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.posts: list[tuple[int, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(receiver.posts) < receiver.fail_first else 200
                receiver.posts.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [body for status, body in self.posts if status == 200]


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """A webhook receiver failing the first 2 POSTs (``indirect`` parametrisation changes that)."""
    server = Receiver(fail_first=getattr(request, "param", 2))
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
