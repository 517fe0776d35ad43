"""MistralBatchAdapter against the Mistral batch emulator on loopback."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.providers.base import (
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderRejected,
    SubmitWithdrawn,
    UnsupportedEndpoint,
)
from gateway.providers.config import ProviderConfig
from gateway.providers.mistral_batch import MistralBatchAdapter
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.providers.support import FAST_RETRY, calls, chat_line, questions, read_lines, wait_terminal, write_shard

KEY = "mistral-test-key-8e2b4f61d0"
MODEL = "mistral-small-latest"
EMBED = "mistral-embed"
EMBEDDINGS = "/v1/embeddings"
HOUR = 3600.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(name="mistral", kind="mistral", models=[MODEL, EMBED], api_key=KEY, processing_delay_s=0.2)
    with SimulatorCluster([spec], control_port=None) as running:
        yield running


def adapter_of(
    cluster: SimulatorCluster, http: httpx.AsyncClient, key: str = KEY, **options: int
) -> MistralBatchAdapter:
    config = ProviderConfig(name="mistral", kind="mistral", base_url=cluster.base_url("mistral"), models=[MODEL])
    return MistralBatchAdapter(config=config, http=http, api_key=key, retry=FAST_RETRY, **options)


@pytest.mark.parametrize(
    ("inline", "results_inline_only"), [(True, False), (False, False), (True, True), (False, True)],
    ids=["inline", "file", "inline-results-only", "file-results-only"],
)  # fmt: skip
async def test_round_trip_inline_or_through_a_file(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, inline: bool, results_inline_only: bool
) -> None:
    """``results_inline_only``: the finished job names no output or error file; its results are read inline."""
    cluster.set_faults("mistral", fail_fraction=0.2, results_inline_only=results_inline_only)
    adapter = adapter_of(cluster, http, inline_max_requests=100 if inline else 10)
    lines = questions(30, MODEL, max_completion_tokens=40)
    lines[3]["body"]["logprobs"] = True  # Mistral cannot honour it: never sent, a 400 line instead
    lines[4]["body"]["messages"].insert(0, {"role": "developer", "content": "Be brief."})
    shard = write_shard(tmp_path, lines, MODEL)
    submitted = await adapter.submit(shard)
    job = cluster.state("mistral").jobs[submitted.provider_batch_id]
    assert job.metadata == {"batchgw_submit_token": shard.submit_token, "batchgw_shard_id": shard.shard_id}
    assert (submitted.provider_file_id is None) is inline
    assert len(await calls(cluster, "mistral", "POST", "/files")) == (0 if inline else 1)
    assert job.expires_at == job.created_at + 24 * 3600

    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.raw_status == "SUCCESS"
    assert final.total == 29 and final.completed + final.failed == 29 and final.failed > 0
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    by_id = {line["custom_id"]: line for line in read_lines(dest)}
    assert sorted(by_id) == [f"req-{i:03d}" for i in range(30)]
    refused = by_id["req-003"]["response"]
    assert refused["status_code"] == 400 and "cannot be sent to a Mistral model" in refused["body"]["error"]["message"]
    statuses = [line["response"]["status_code"] for line in by_id.values()]
    assert statuses.count(200) == final.completed and statuses.count(500) == final.failed
    downloads = await calls(cluster, "mistral", "GET", "/content")  # the output and error files
    assert (not downloads) is results_inline_only
    answered = by_id["req-004"]["response"]
    assert answered["status_code"] in (200, 500)
    if answered["status_code"] == 200:  # max_completion_tokens arrived as max_tokens
        assert answered["body"]["usage"]["completion_tokens"] <= 40


async def test_an_inline_output_nested_too_deeply_is_skipped_and_the_others_are_read(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.set_faults("mistral", results_inline_only=True, nested_output_line=True, fail_fraction=0.0)
    adapter = adapter_of(cluster, http)
    shard = write_shard(tmp_path, questions(10, MODEL), MODEL)
    submitted = await adapter.submit(shard)
    await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    cluster.set_faults("mistral", results_inline_only=False, nested_output_line=False)
    lines = read_lines(dest)
    assert len(lines) == 9 and all(line["response"]["status_code"] == 200 for line in lines)  # the 10th runs again
    assert "skipped inline output" in caplog.text


async def test_embeddings_round_trip(cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path) -> None:
    adapter = adapter_of(cluster, http)
    body = {"model": EMBED, "dimensions": 4}
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS, "body": {**body, "input": f"t{i}"}}
        for i in range(5)
    ]
    submitted = await adapter.submit(write_shard(tmp_path, lines, EMBED, endpoint=EMBEDDINGS))
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest)
    results = read_lines(dest)
    assert sorted(line["custom_id"] for line in results) == [f"e{i}" for i in range(5)]
    assert {len(line["response"]["body"]["data"][0]["embedding"]) for line in results} == {4}


async def test_a_field_mistral_does_not_know_comes_back_as_its_422(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http)
    shard = write_shard(tmp_path, [chat_line("odd", "hi", MODEL, frequency_penaltyy=0.1)], MODEL)
    submitted = await adapter.submit(shard)
    await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest)
    [line] = read_lines(dest)
    assert line["response"]["status_code"] == 422
    assert line["response"]["body"]["detail"][0]["loc"] == ["body", "frequency_penaltyy"]


@pytest.mark.parametrize(("left_s", "hours"), [(24 * HOUR, 24), (72 * HOUR - 5, 71), (30 * 24 * HOUR, 167), (60.0, 1)])
async def test_timeout_hours_fit_the_clients_window(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, left_s: float, hours: int
) -> None:
    shard = dataclasses.replace(write_shard(tmp_path, questions(1, MODEL), MODEL), window_s=left_s)
    submitted = await adapter_of(cluster, http).submit(shard)
    job = cluster.state("mistral").jobs[submitted.provider_batch_id]
    assert job.expires_at == job.created_at + hours * 3600


async def test_find_cancel_and_withdrawal(cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path) -> None:
    cluster.set_faults("mistral", stall=True)
    adapter = adapter_of(cluster, http)
    shard = write_shard(tmp_path, questions(3, MODEL), MODEL)
    submitted = await adapter.submit(shard)
    assert await adapter_of(cluster, http).find_submitted(shard.submit_token) == submitted
    assert await adapter.find_submitted("tok-never-used") is None
    await adapter.cancel(submitted.provider_batch_id)
    cluster.set_faults("mistral", stall=False)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.CANCELLED and final.raw_status == "CANCELLED"
    await adapter.cancel(submitted.provider_batch_id)  # already ended: nothing to stop, no error

    withdrawn = dataclasses.replace(write_shard(tmp_path, questions(20, MODEL), MODEL), may_create=lambda: False)
    creates = len(await calls(cluster, "mistral", "POST", "/batch/jobs"))
    with pytest.raises(SubmitWithdrawn):
        await adapter_of(cluster, http, inline_max_requests=5).submit(withdrawn)
    assert len(await calls(cluster, "mistral", "POST", "/batch/jobs")) == creates


async def test_refusals(cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path) -> None:
    wrong = adapter_of(cluster, http, key="wrong-" + KEY)
    with pytest.raises(ProviderAuthFailed) as denied:
        await wrong.submit(write_shard(tmp_path, questions(1, MODEL), MODEL))
    assert KEY not in str(denied.value)
    adapter = adapter_of(cluster, http)
    with pytest.raises(ProviderRejected, match="no request can be sent to Mistral"):
        await adapter.submit(write_shard(tmp_path, questions(1, MODEL, logprobs=True), MODEL))
    audio = [{"custom_id": "a", "method": "POST", "url": "/v1/audio/speech", "body": {}}]
    with pytest.raises(UnsupportedEndpoint):
        await adapter.submit(write_shard(tmp_path, audio, MODEL, endpoint="/v1/audio/speech"))
    assert (await adapter.health()).healthy
