"""Claims are one compare-and-set statement: of many workers racing for a row, exactly one wins."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard
from gateway.db.unit_of_work import transaction
from tests.conftest import migrated_context
from tests.db import key_and_batch

RACERS = 12


async def _seed(context: GatewayContext) -> tuple[str, str]:
    async with context.sessions() as session:
        _secret, _key, batch = await key_and_batch(session, "racers")
        shard = Shard(batch_id=batch.id, seq=0, provider="p", model="m", provider_model="m", input_key="k")
        session.add(shard)
        await session.commit()
        return batch.id, shard.id


async def _race(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        batch_id, shard_id = await _seed(context)

        async def claim_batch(n: int) -> Batch | None:
            async with transaction(context.sessions) as session:
                return await repo.claim_batch(session, ["validate"], f"worker-{n}", 30)

        async def claim_shard(n: int) -> Shard | None:
            async with transaction(context.sessions) as session:
                return await shard_db.claim_shard(session, f"worker-{n}", 30)

        batches = [b for b in await asyncio.gather(*(claim_batch(n) for n in range(RACERS))) if b]
        shards = [s for s in await asyncio.gather(*(claim_shard(n) for n in range(RACERS))) if s]
        assert [b.id for b in batches] == [batch_id]
        assert [s.id for s in shards] == [shard_id]
        # The winner's name is the one recorded, and a released lease can be claimed again.
        async with transaction(context.sessions) as session:
            assert (await repo.get_batch(session, None, batch_id)).lease_owner == batches[0].lease_owner  # type: ignore[union-attr]
            winner = batches[0]
            await repo.release_batch(session, batch_id, Lease(str(winner.lease_owner), winner.lease_token, 30))
            again = await repo.claim_batch(session, ["validate"], "late-worker", 30)
        assert again is not None and again.lease_owner == "late-worker"
        assert again.lease_token == winner.lease_token + 1, "every claim gives the row a new fencing token"


def test_exactly_one_claim_wins(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_race(database_kind, tmp_path))


async def _fenced(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        batch_id, shard_id = await _seed(context)
        later = time.time() + 3600
        async with transaction(context.sessions) as session:
            sibling = Shard(
                batch_id=batch_id, seq=1, provider="p", model="m", provider_model="m", input_key="k1",
                state="running", provider_batch_id="pb-ended", next_action_at=later,
            )  # fmt: skip
            session.add(sibling)
        async with transaction(context.sessions) as session:
            first = await shard_db.claim_shard(session, "frozen-worker", 0.01)
        assert first is not None
        stale = Lease("frozen-worker", first.lease_token, 0.01)
        await asyncio.sleep(0.05)  # the frozen worker's lease expires; another worker takes the shard
        async with transaction(context.sessions) as session:
            second = await shard_db.claim_shard(session, "live-worker", 30)
        assert second is not None and second.id == shard_id
        live = Lease("live-worker", second.lease_token, 30)
        async with context.sessions() as session:
            assert not await shard_db.save_shard(session, first, stale, state="done", last_error="late write")
            assert stale.lost
            assert not await shard_db.extend_shard_lease(session, shard_id, stale)
            # Nor can it act on what its last poll saw: the other shards keep their time.
            assert (
                await shard_db.poll_now(session, first, Lease("frozen-worker", first.lease_token, 30), ["pb-ended"])
                == 0
            )
            assert await shard_db.poll_now(session, first, stale, ["pb-ended"]) == 0
            assert (await session.get(Shard, sibling.id)).next_action_at == later  # type: ignore[union-attr]
            assert await shard_db.save_shard(session, second, live, last_error="live write")
            assert await shard_db.poll_now(session, second, live, ["pb-ended"]) == 1
            await session.commit()
            row = await session.get(Shard, shard_id)
            assert row is not None
            await session.refresh(row)
        assert (row.state, row.last_error, row.lease_owner) == ("queued", "live write", "live-worker")


def test_a_worker_that_lost_its_lease_can_write_nothing(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_fenced(database_kind, tmp_path))
