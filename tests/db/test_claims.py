"""Claims are one compare-and-set statement: of many workers racing for a row, exactly one wins."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.engine import upgrade_to_head
from gateway.db.models import Batch, Shard, StoredFile
from gateway.settings import Settings
from tests.conftest import FreshDatabase

RACERS = 12


async def _seed(context: GatewayContext) -> tuple[str, str]:
    async with context.sessions() as session:
        _secret, key = await repo.create_api_key(session, "racers")
        stored = StoredFile(team_id=key.team_id, filename="in.jsonl", purpose="batch", storage_key="files/x")
        session.add(stored)
        batch = Batch(
            team_id=key.team_id, input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        session.add(batch)
        await session.flush()
        shard = Shard(batch_id=batch.id, seq=0, provider="p", model="m", provider_model="m", input_key="k")
        session.add(shard)
        await session.commit()
        return batch.id, shard.id


async def _race(database_kind: str, tmp_path: Path) -> None:
    database = FreshDatabase.create(database_kind, tmp_path)
    settings = Settings(data_dir=tmp_path, database_url=database.url)
    upgrade_to_head(settings.resolved_database_url)
    context = GatewayContext.create(settings)
    try:
        batch_id, shard_id = await _seed(context)

        async def claim_batch(n: int) -> Batch | None:
            async with context.sessions() as session:
                return await repo.claim_batch(session, ["validate"], f"worker-{n}", 30)

        async def claim_shard(n: int) -> Shard | None:
            async with context.sessions() as session:
                return await shard_db.claim_shard(session, f"worker-{n}", 30)

        batches = [b for b in await asyncio.gather(*(claim_batch(n) for n in range(RACERS))) if b]
        shards = [s for s in await asyncio.gather(*(claim_shard(n) for n in range(RACERS))) if s]
        assert [b.id for b in batches] == [batch_id]
        assert [s.id for s in shards] == [shard_id]
        # The winner's name is the one recorded, and a released lease can be claimed again.
        async with context.sessions() as session:
            assert (await repo.get_batch(session, None, batch_id)).lease_owner == batches[0].lease_owner  # type: ignore[union-attr]
            await repo.release_batch(session, batch_id, str(batches[0].lease_owner))
            again = await repo.claim_batch(session, ["validate"], "late-worker", 30)
        assert again is not None and again.lease_owner == "late-worker"
    finally:
        await context.close()
        database.drop()


def test_exactly_one_claim_wins(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_race(database_kind, tmp_path))
