"""OpenRouterBatchAdapter against the OpenRouter batch emulator on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.providers.base import (
    CapabilityNotSupported,
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderRejected,
    SubmitWithdrawn,
    UnsupportedEndpoint,
)
from gateway.providers.config import ProviderConfig
from gateway.providers.openrouter_batch import OpenRouterBatchAdapter
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import loopback
from tests.providers.support import FAST_RETRY, calls, questions, read_lines, wait_terminal, write_shard

KEY = "sk-or-test-5b1c9e0a7d"
MODEL = "meta-llama/llama-3.3-70b-instruct"
EMBED = "openai/text-embedding-3-small"
EMBEDDINGS = "/v1/embeddings"
PRICE = (0.13, 0.42)
"""What the emulated OpenRouter bills, USD per million input and output tokens."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(
        name="openrouter",
        kind="openrouter",
        models=[MODEL, EMBED],
        api_key=KEY,
        processing_delay_s=0.2,
        usd_per_mtok=list(PRICE),
    )
    with SimulatorCluster([spec], control_port=None) as running:
        yield running


def adapter_of(
    cluster: SimulatorCluster, http: httpx.AsyncClient, key: str = KEY, **options: object
) -> OpenRouterBatchAdapter:
    config = ProviderConfig(
        name="openrouter", kind="openrouter", base_url=cluster.base_url("openrouter"), models=[MODEL]
    )
    return OpenRouterBatchAdapter(config=config, http=http, api_key=key, retry=FAST_RETRY, **options)  # type: ignore[arg-type]


async def test_round_trip_with_what_openrouter_billed_on_each_answer(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    cluster.set_faults("openrouter", fail_fraction=0.2)
    adapter = adapter_of(cluster, http)
    lines = questions(30, MODEL, max_tokens=40)
    lines[5]["body"] = "not an object"  # never sent: a 400 line instead
    shard = write_shard(tmp_path, lines, MODEL)
    submitted = await adapter.submit(shard)
    [create] = await calls(cluster, "openrouter", "POST", "/batches")
    assert create.status == 202
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.raw_status == "completed"
    assert final.total == 29 and final.completed + final.failed == 29 and final.failed > 0

    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    by_id = {line["custom_id"]: line for line in read_lines(dest)}
    assert sorted(by_id) == [f"req-{i:03d}" for i in range(30)]
    refused = by_id["req-005"]["response"]
    assert refused["status_code"] == 400 and "cannot be sent to OpenRouter" in refused["body"]["error"]["message"]
    answered = [line for line in by_id.values() if line["error"] is None and line["response"]["status_code"] == 200]
    failed = [line for line in by_id.values() if line["custom_id"] != "req-005" and line not in answered]
    assert len(answered) == final.completed and len(failed) == final.failed
    assert all("billed_usd" not in line for line in failed)
    for line in answered:
        usage = line["response"]["body"]["usage"]
        expected = (usage["prompt_tokens"] * PRICE[0] + usage["completion_tokens"] * PRICE[1]) / 1e6
        assert line["billed_usd"] == pytest.approx(expected, rel=1e-9)
        assert usage["completion_tokens"] <= 40
    batch = loopback.get(
        f"{cluster.base_url('openrouter')}/batches/{submitted.provider_batch_id}",
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    assert sum(line["billed_usd"] for line in answered) == pytest.approx(batch["usage"]["cost"], rel=1e-9)


async def test_a_result_nested_too_deeply_is_skipped_and_the_others_are_read(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.set_faults("openrouter", nested_output_line=True)
    adapter = adapter_of(cluster, http)
    shard = write_shard(tmp_path, questions(20, MODEL, max_tokens=10), MODEL)
    submitted = await adapter.submit(shard)
    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        final = await wait_terminal(adapter, submitted.provider_batch_id)  # the status reads get through too
        dest = tmp_path / "out.jsonl"
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert final.state is ProviderBatchState.COMPLETED and final.completed == 20
    lines = read_lines(dest)
    assert len(lines) == 19 and all(line["response"]["status_code"] == 200 for line in lines)  # the 20th runs again
    assert all(line["billed_usd"] > 0 for line in lines)
    assert "nested too deeply to read" in caplog.text


async def test_the_create_body_names_endpoint_and_model_first_and_pins_the_upstream_providers(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http, upstream_providers=["deepinfra"])
    submitted = await adapter.submit(write_shard(tmp_path, questions(3, MODEL), MODEL))
    [create] = await calls(cluster, "openrouter", "POST", "/batches")
    assert create.status == 202
    job = cluster.state("openrouter").jobs[submitted.provider_batch_id]
    assert job.endpoint == "/v1/chat/completions" and job.model == MODEL and len(job.items) == 3
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED
    batch = loopback.get(
        f"{cluster.base_url('openrouter')}/batches/{submitted.provider_batch_id}",
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    assert batch["provider"] == "deepinfra"  # the batch ran where the pin said


async def test_embeddings_round_trip(cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path) -> None:
    adapter = adapter_of(cluster, http)
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS, "body": {"model": EMBED, "input": f"text {i}"}}
        for i in range(4)
    ]
    submitted = await adapter.submit(write_shard(tmp_path, lines, EMBED, endpoint=EMBEDDINGS))
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest)
    results = read_lines(dest)
    assert sorted(line["custom_id"] for line in results) == ["e0", "e1", "e2", "e3"]
    assert all(line["response"]["body"]["object"] == "list" for line in results)
    assert all(line["billed_usd"] > 0 for line in results)


async def test_a_shard_over_openrouters_caps_is_refused_before_any_call(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http)
    with pytest.raises(ProviderRejected, match="at most 5000 requests") as refused:
        await adapter.submit(write_shard(tmp_path, questions(5_001, MODEL), MODEL))
    assert refused.value.status_code == 413
    assert await calls(cluster, "openrouter", "POST", "/batches") == []


async def test_a_batch_that_fails_validation_after_the_202_reports_why(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http)
    lines = questions(3, MODEL)
    lines[1]["body"]["model"] = "another/model"  # OpenRouter fails a batch whose requests name another model
    submitted = await adapter.submit(write_shard(tmp_path, lines, MODEL))
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.FAILED
    assert final.error is not None and "req-001" in final.error
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest)  # ended without answers: nothing, no error
    assert dest.read_bytes() == b""


async def test_a_wrong_key_is_an_auth_failure_naming_the_variable(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http, key="sk-or-wrong-key-0000")
    with pytest.raises(ProviderAuthFailed) as failed:
        await adapter.submit(write_shard(tmp_path, questions(2, MODEL), MODEL))
    assert "sk-or-wrong-key-0000" not in str(failed.value)
    assert not (await adapter.health()).healthy
    assert (await adapter_of(cluster, http).health()).healthy


async def test_a_429_flood_on_create_is_retried_and_creates_one_batch(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    cluster.set_faults("openrouter", rate_limit_next=2, retry_after_s=0)
    adapter = adapter_of(cluster, http)
    submitted = await adapter.submit(write_shard(tmp_path, questions(2, MODEL), MODEL))
    creates = await calls(cluster, "openrouter", "POST", "/batches")
    assert [call.status for call in creates] == [429, 429, 202]
    assert list(cluster.state("openrouter").jobs) == [submitted.provider_batch_id]


async def test_only_a_create_answered_in_this_process_is_adopted_and_cancel_is_unsupported(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http)
    shard = write_shard(tmp_path, questions(2, MODEL), MODEL)
    submitted = await adapter.submit(shard)
    assert await adapter.find_submitted(shard.submit_token) == submitted
    assert await adapter_of(cluster, http).find_submitted(shard.submit_token) is None  # a restarted process
    with pytest.raises(CapabilityNotSupported, match="no cancel"):
        await adapter.cancel(submitted.provider_batch_id)


async def test_a_withdrawn_shard_creates_nothing_and_other_endpoints_are_refused(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http)
    shard = write_shard(tmp_path, questions(2, MODEL), MODEL)
    withdrawn = type(shard)(**{**shard.__dict__, "may_create": lambda: False})
    with pytest.raises(SubmitWithdrawn):
        await adapter.submit(withdrawn)
    with pytest.raises(UnsupportedEndpoint):
        await adapter.submit(write_shard(tmp_path, questions(1, MODEL), MODEL, endpoint="/v1/completions"))
    assert cluster.state("openrouter").jobs == {}
