"""Schedules under a lease: a wake-up (a provider webhook) that arrives while a worker holds a shard, or an
abandoned provider batch, survives the worker's own save of its next poll; with no wake-up the save writes
what it asks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.context import GatewayContext
from gateway.db import abandoned as abandoned_db
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard
from gateway.db.unit_of_work import transaction
from tests.conftest import migrated_context
from tests.db import key_and_batch

PROVIDER = "p"


async def _running_shard(context: GatewayContext, provider_batch_id: str, next_action_at: float) -> tuple[Batch, Shard]:
    async with transaction(context.sessions) as session:
        _secret, _key, batch = await key_and_batch(session, "schedules")
        shard = Shard(
            batch_id=batch.id, seq=0, provider=PROVIDER, model="m", provider_model="m", input_key="k",
            state="running", provider_batch_id=provider_batch_id, next_action_at=next_action_at,
        )  # fmt: skip
        session.add(shard)
        return batch, shard


async def _claimed(context: GatewayContext) -> tuple[Shard, Lease]:
    async with transaction(context.sessions) as session:
        shard = await shard_db.claim_shard(session, "worker", 30)
    assert shard is not None
    return shard, Lease("worker", shard.lease_token, 30)


async def _webhook(context: GatewayContext, provider_batch_id: str, at: float) -> str | None:
    async with transaction(context.sessions) as session:
        return await shard_db.poll_ended_now(session, PROVIDER, provider_batch_id, at)


async def _save_next_poll(context: GatewayContext, shard: Shard, lease: Lease, at: float) -> None:
    async with transaction(context.sessions) as session:
        assert await shard_db.save_shard(session, shard, lease, next_action_at=at, poll_delay_s=30.0)


async def _stored_next_action_at(context: GatewayContext, shard_id: str) -> float:
    async with context.sessions() as session:
        shard = await session.get(Shard, shard_id)
        assert shard is not None
        return shard.next_action_at


async def _schedules(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        # A webhook while the shard's poll runs: the poll's save (30 s later) keeps the webhook's "now".
        _batch, shard = await _running_shard(context, "pb-polled", time.time() - 1)
        shard_id = shard.id
        shard, lease = await _claimed(context)
        woken_at = time.time()
        assert await _webhook(context, "pb-polled", woken_at) == "running"
        await _save_next_poll(context, shard, lease, time.time() + 30)
        assert await _stored_next_action_at(context, shard_id) == woken_at
        # It stands until a poll claimed after it: that poll's save writes what it asks.
        await _save_next_poll(context, shard, lease, time.time() + 30)
        assert await _stored_next_action_at(context, shard_id) == woken_at
        async with transaction(context.sessions) as session:
            await shard_db.release_shard(session, shard_id, lease)
        shard, lease = await _claimed(context)
        later = time.time() + 30
        await _save_next_poll(context, shard, lease, later)
        assert await _stored_next_action_at(context, shard_id) == later

        # Not held: a webhook makes the waiting shard due now, and a second one makes it due at its own time (the
        # moment its poll's status read must follow).
        async with transaction(context.sessions) as session:
            await shard_db.release_shard(session, shard_id, lease)
        first = time.time()
        assert await _webhook(context, "pb-polled", first) == "running"
        assert await _stored_next_action_at(context, shard_id) == first
        assert await _webhook(context, "pb-polled", first + 5) == "running"
        assert await _stored_next_action_at(context, shard_id) == first + 5


def test_a_webhook_during_a_poll_survives_the_polls_save(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_schedules(database_kind, tmp_path))


async def _abandoned_schedule(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        batch, shard = await _running_shard(context, "pb-left", time.time() + 3600)
        async with transaction(context.sessions) as session:
            await abandoned_db.register(session, shard, batch, "moved off", provider_batch_id="pb-left")
        [row] = await abandoned_db.claim_due(context.sessions, "settler", 30)
        lease = Lease("settler", row.lease_token, 30)
        woken_at = time.time()
        async with transaction(context.sessions) as session:
            assert await abandoned_db.poll_ended_now(session, PROVIDER, "pb-left", woken_at) == 1
        async with transaction(context.sessions) as session:
            assert await abandoned_db.save(session, row, lease, next_action_at=time.time() + 30, attempts=1)
        async with context.sessions() as session:
            [stored] = await abandoned_db.for_batch(session, batch.id)
        assert stored.next_action_at == woken_at


def test_a_webhook_during_an_abandoned_batchs_poll_survives_its_save(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_abandoned_schedule(database_kind, tmp_path))


async def _rolled_back_schedule(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        await _running_shard(context, "pb-rolled-back", time.time() - 1)
        shard, lease = await _claimed(context)
        claimed_value = shard.next_action_at
        # The step saves its next poll, then fails later in the same unit of work: nothing of it is kept.
        with pytest.raises(RuntimeError):
            async with transaction(context.sessions) as session:
                assert await shard_db.save_shard(session, shard, lease, next_action_at=time.time() + 30)
                raise RuntimeError("a later write of the step failed")
        assert shard.next_action_at == claimed_value, "the in-memory copy is what the database still holds"
        # Its failure is then recorded with a back-off: kept as asked, not mistaken for a wake-up.
        retry_at = time.time() + 60
        async with transaction(context.sessions) as session:
            assert await shard_db.record_shard_failure(session, shard, lease, {"error": "x"}, retry_at, "retrying")
        assert await _stored_next_action_at(context, shard.id) == retry_at


def test_a_rolled_back_save_is_not_taken_for_a_wake_up(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_rolled_back_schedule(database_kind, tmp_path))
