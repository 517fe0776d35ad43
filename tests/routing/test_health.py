"""The circuit breaker on a real database: failures open it, a probe after the cool-down decides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.context import GatewayContext
from gateway.db import routing as routing_db
from gateway.db.engine import upgrade_to_head
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
    database = FreshDatabase.create(database_kind, tmp_path)
    settings = Settings(
        data_dir=tmp_path,
        database_url=database.url,
        providers={"prov": ProviderConfig(kind="openai", base_url=cluster.base_url("prov"))},
        routing=RoutingSettings(circuit_failure_threshold=2, circuit_cooldown_s=COOLDOWN_S),
    )
    await asyncio.to_thread(upgrade_to_head, settings.resolved_database_url)
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
