"""When a shard's requests may leave its provider, decided against live emulators and a real database: only
for another provider that answers now, and never while the shard's own provider answers again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from gateway.context import GatewayContext
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import AbandonedProviderBatch, Batch, Shard
from gateway.db.unit_of_work import transaction
from gateway.pipeline.lifecycle import abandon_provider_batch, escalation_at, may_leave_provider
from gateway.providers.config import ProviderConfig
from gateway.settings import CatalogSettings, Settings
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import FreshDatabase, migrated_context
from tests.db import key_and_batch

MODEL = "gpt-4o-mini"
FAILURE = "home unreachable for 40s (last error: connection refused)"


def write_catalog(folder: Path) -> Path:
    """One model at two providers: ``home`` the cheaper."""
    offers = []
    for provider, rate in (("home", 0.1), ("away", 0.2)):
        offers += [
            f'[[models."{MODEL}".offers]]',
            f'provider = "{provider}"',
            f'provider_model = "{MODEL}"',
            'modes = ["batch"]',
            f"input_per_mtok = {rate * 2}",
            f"output_per_mtok = {rate * 4}",
            f"batch_input_per_mtok = {rate}",
            f"batch_output_per_mtok = {rate * 2}",
            'source = "test prices"',
            "as_of = 2026-12-01",
        ]
    path = folder / "catalog.toml"
    path.write_text("\n".join(["schema_version = 1", f'[models."{MODEL}"]', *offers, ""]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    with SimulatorCluster([ProviderSpec(name="home"), ProviderSpec(name="away")], control_port=0) as running:
        yield running


@pytest.fixture
async def context(cluster: SimulatorCluster, database_kind: str, tmp_path: Path) -> AsyncIterator[GatewayContext]:
    database = FreshDatabase.create(database_kind, tmp_path, migrated=True)
    settings = Settings(
        data_dir=tmp_path,
        database_url=database.url,
        providers={
            name: ProviderConfig(kind="openai", base_url=cluster.base_url(name), models=[MODEL])
            for name in ("home", "away")
        },
        catalog=CatalogSettings(file=write_catalog(tmp_path)),
    )
    made = GatewayContext.create(settings)
    for name in ("home", "away"):
        cluster.set_faults(name, down="off")
    yield made
    await made.close()
    database.drop()


def running_at_home() -> tuple[Batch, Shard]:
    batch = Batch(team_id="team_x", input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h")
    shard = Shard(
        batch_id=batch.id, seq=0, provider="home", model=MODEL, provider_model=MODEL, input_key="k",
        request_count=10, estimated_input_tokens=1_000, estimated_output_tokens=1_000,
    )  # fmt: skip
    return batch, shard


async def test_the_work_moves_when_its_provider_still_fails_and_another_answers(
    cluster: SimulatorCluster, context: GatewayContext
) -> None:
    batch, shard = running_at_home()
    cluster.set_faults("home", down="refuse")
    home = context.providers.get("home")
    verdict = await may_leave_provider(
        context, batch, shard, FAILURE, answers_again=lambda: home.find_submitted("token")
    )
    assert verdict.allowed, verdict.evidence
    assert "away is healthy" in verdict.evidence and verdict.evidence.startswith(FAILURE)


async def test_a_provider_that_answers_again_keeps_its_work(cluster: SimulatorCluster, context: GatewayContext) -> None:
    # The failure was seen just before the provider came back; by the time another qualifies, it answers.
    batch, shard = running_at_home()
    home = context.providers.get("home")
    verdict = await may_leave_provider(
        context, batch, shard, FAILURE, answers_again=lambda: home.find_submitted("token")
    )
    assert not verdict.allowed
    assert "home answers again, so nothing moves" in verdict.evidence


async def test_a_provider_answering_429_is_alive_and_keeps_its_work(
    cluster: SimulatorCluster, context: GatewayContext
) -> None:
    batch, shard = running_at_home()
    cluster.set_faults("home", rate_limit_rate=1.0)
    try:
        home = context.providers.get("home")
        verdict = await may_leave_provider(
            context, batch, shard, FAILURE, answers_again=lambda: home.find_submitted("token")
        )
    finally:
        cluster.set_faults("home", rate_limit_rate=0.0)
    assert not verdict.allowed, verdict.evidence


async def test_with_nowhere_healthy_to_go_nothing_moves(cluster: SimulatorCluster, context: GatewayContext) -> None:
    batch, shard = running_at_home()
    cluster.set_faults("home", down="refuse")
    cluster.set_faults("away", down="503")
    verdict = await may_leave_provider(context, batch, shard, FAILURE)
    assert not verdict.allowed
    assert "no other provider is healthy now (checked: away)" in verdict.evidence


# --- abandoning a provider batch: only by the shard's holder --------------------------------------------


async def test_only_the_shard_s_holder_abandons_its_provider_batch(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        async with transaction(context.sessions) as session:
            _secret, _key, batch = await key_and_batch(session, "abandoning")
            session.add(
                Shard(
                    batch_id=batch.id,
                    seq=0,
                    provider="p",
                    model="m",
                    provider_model="m",
                    input_key="k",
                    state="collecting",
                    provider_batch_id="pb-1",
                    next_action_at=time.time() - 1,
                )
            )
        async with transaction(context.sessions) as session:
            frozen_shard = await shard_db.claim_shard(session, "frozen", 0.05)
        assert frozen_shard is not None
        frozen = Lease("frozen", frozen_shard.lease_token, 0.05)
        await asyncio.sleep(0.1)  # its lease runs out, and another worker takes the shard
        async with transaction(context.sessions) as session:
            live_shard = await shard_db.claim_shard(session, "live", 30)
        assert live_shard is not None
        live = Lease("live", live_shard.lease_token, 30)

        assert not await abandon_provider_batch(context, frozen_shard, batch, frozen, "its step failed")
        assert frozen.lost
        async with context.sessions() as session:
            assert (await session.exec(select(AbandonedProviderBatch))).all() == []

        assert await abandon_provider_batch(context, live_shard, batch, live, "its step failed")
        async with context.sessions() as session:
            [row] = (await session.exec(select(AbandonedProviderBatch))).all()
        assert (row.provider_batch_id, row.shard_id, row.origin) == ("pb-1", live_shard.id, "abandoned")


def test_a_provider_batch_is_moved_before_the_deadline_by_the_margin_or_halfway_whichever_is_later() -> None:
    def moved_at(deadline: str, submitted_at: float, ahead_s: float) -> float | None:
        batch = Batch(team_id="acme", input_file_id="file-1", endpoint="/v1/chat/completions", created_at=1_000)
        batch.metadata_ = {"deadline": deadline}
        return escalation_at(batch, Shard(batch_id=batch.id, submitted_at=submitted_at), ahead_s)

    # A deadline well beyond the margin: the margin before it.
    assert moved_at("1h", 1_010, 900) == 1_000 + 3600 - 900
    # A deadline shorter than the margin: halfway from the submission to the deadline, not at once.
    assert moved_at("10m", 1_010, 900) == 1_010 + (1_600 - 1_010) / 2
    # A follow-up submitted later gets half of what is left then.
    assert moved_at("10m", 1_400, 900) == 1_500
    # No deadline, or a margin of 0: never.
    assert moved_at("24h", 1_010, 0) is None
    plain = Batch(team_id="acme", input_file_id="file-1", endpoint="/v1/chat/completions", created_at=1_000)
    assert escalation_at(plain, Shard(batch_id=plain.id, submitted_at=1_010), 900) is None
