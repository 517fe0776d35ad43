"""The circuit breaker on a real database: failures open it, a probe after the cool-down decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import routing as routing_db
from gateway.db.models import Batch, Shard, StoredFile
from gateway.providers.config import ProviderConfig
from gateway.routing import health
from gateway.settings import RoutingSettings, Settings
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import FreshDatabase

COOLDOWN_S = 0.3


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    with SimulatorCluster([ProviderSpec(name="prov")], control_port=0) as running:
        yield running


@pytest.fixture
async def context(cluster: SimulatorCluster, database_kind: str, tmp_path: Path) -> AsyncIterator[GatewayContext]:
    database = FreshDatabase.create(database_kind, tmp_path, migrated=True)
    settings = Settings(
        data_dir=tmp_path,
        database_url=database.url,
        providers={"prov": ProviderConfig(kind="openai", base_url=cluster.base_url("prov"))},
        routing=RoutingSettings(circuit_failure_threshold=2, circuit_cooldown_s=COOLDOWN_S),
    )
    made = GatewayContext.create(settings)
    cluster.set_faults("prov", down="off")
    yield made
    await made.close()
    database.drop()


async def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count(context: GatewayContext) -> None:
    assert await health.circuit_of(context, "prov") == "closed"
    assert not await health.call_failed(context, "prov", "timeout")
    await health.call_succeeded(context, "prov")
    assert not await health.call_failed(context, "prov", "timeout"), "the success should have reset the count"
    assert await health.call_failed(context, "prov", "connection refused")
    assert await health.circuit_of(context, "prov") == "open"
    state = (await health.provider_states(context))["prov"]
    assert not state.healthy and state.circuit == "open"


async def test_after_the_cooldown_one_probe_decides(cluster: SimulatorCluster, context: GatewayContext) -> None:
    for _ in range(2):
        await health.call_failed(context, "prov", "503")
    cluster.set_faults("prov", down="503")
    await health.probe_open_circuits(context)
    assert await health.circuit_of(context, "prov") == "open", "probed before the cool-down"
    await asyncio.sleep(COOLDOWN_S + 0.1)
    await health.probe_open_circuits(context)
    assert await health.circuit_of(context, "prov") == "open", "a failed probe keeps it open"
    cluster.set_faults("prov", down="off")
    await asyncio.sleep(COOLDOWN_S + 0.1)
    await health.probe_open_circuits(context)
    assert await health.circuit_of(context, "prov") == "closed"
    async with context.sessions() as session:
        row = (await routing_db.health_rows(session))["prov"]
    assert row.consecutive_failures == 0 and row.last_success_at is not None


async def test_only_one_caller_claims_the_probe(context: GatewayContext) -> None:
    for _ in range(2):
        await health.call_failed(context, "prov", "503")
    await asyncio.sleep(COOLDOWN_S + 0.1)

    async def claim() -> bool:
        async with context.sessions() as session:
            won = await routing_db.claim_probe(session, "prov", COOLDOWN_S, 30.0)
            await session.commit()
            return won

    results = await asyncio.gather(*(claim() for _ in range(6)))
    assert sorted(results) == [False] * 5 + [True]
    assert await health.circuit_of(context, "prov") == "half_open"
    assert await health.call_failed(context, "prov", "probe failed"), "a failed probe opens it again"


async def _waiting_shards(context: GatewayContext, later: float) -> dict[str, str]:
    """Shards of one batch, each waiting until ``later`` for its own reason: ``{label: shard id}``."""
    waits = {
        "unreachable": ("prov", "running", "provider_unreachable"),
        "circuit": ("prov", "queued", "circuit_open"),
        "key": ("prov", "queued", "auth_failed"),
        "rate_limited": ("prov", "running", "rate_limited"),
        "turnaround": ("prov", "running", "provider_turnaround"),
        "elsewhere": ("other", "running", "provider_unreachable"),
    }
    async with context.sessions() as session:
        _secret, key = await repo.create_api_key(session, "waits")
        stored = StoredFile(team_id=key.team_id, filename="in.jsonl", purpose="batch", storage_key="files/w")
        session.add(stored)
        batch = Batch(team_id=key.team_id, input_file_id=stored.id, endpoint="/v1/chat/completions",
                      completion_window="24h", stage="run")  # fmt: skip
        session.add(batch)
        await session.flush()
        shards = {
            label: Shard(
                batch_id=batch.id,
                seq=seq,
                provider=provider,
                model="m",
                provider_model="m",
                input_key=f"k{seq}",
                state=state,
                wait_code=code,
                next_action_at=later,
            )
            for seq, (label, (provider, state, code)) in enumerate(waits.items())
        }
        session.add_all(shards.values())
        await session.commit()
        return {label: shard.id for label, shard in shards.items()}


async def _due_now(context: GatewayContext, ids: dict[str, str]) -> set[str]:
    async with context.sessions() as session:
        rows = {label: await session.get(Shard, shard_id) for label, shard_id in ids.items()}
    return {label for label, row in rows.items() if row is not None and row.next_action_at <= time.time()}


async def test_a_circuit_closing_wakes_the_shards_waiting_for_the_provider(context: GatewayContext) -> None:
    ids = await _waiting_shards(context, time.time() + 600)
    await health.call_failed(context, "prov", "timeout")
    await health.call_succeeded(context, "prov")
    assert await _due_now(context, ids) == set(), "failures reset on a closed circuit wake nobody"
    for _ in range(2):
        await health.call_failed(context, "prov", "connection refused")
    assert await health.circuit_of(context, "prov") == "open"
    await health.call_succeeded(context, "prov")
    # Waiting for the provider to answer again: due now. Waiting on its rate limit, its turnaround, or another
    # provider: left to their own schedule.
    assert await _due_now(context, ids) == {"unreachable", "circuit", "key"}
