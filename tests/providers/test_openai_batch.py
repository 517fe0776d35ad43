"""OpenAIBatchAdapter against the real OpenAI-protocol emulator on loopback, plus the registry."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.pipeline.joining import split_results
from gateway.providers.base import (
    BatchUsage,
    ProviderBatchState,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitWithdrawn,
)
from gateway.providers.config import ProviderConfig
from gateway.providers.openai_batch import OpenAIBatchAdapter
from gateway.providers.openai_wire import UPLOAD_TTL_S, upload_name
from gateway.providers.registry import (
    ADAPTER_KINDS,
    ProviderRegistry,
    UnknownProvider,
    UnknownProviderKind,
    build_adapter,
)
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.providers.support import CHAT, FAST_RETRY, calls, questions, read_lines, wait_terminal, write_shard

SECRET = "sk-sim-secret-7f3a9c2e"
WRONG_KEY = "sk-wrong-key-51b8d0aa"
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="sim", models=["gpt-4o-mini"], processing_delay_s=0.5),
        ProviderSpec(name="secure", models=["gpt-4o-mini"], api_key=SECRET),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def make_adapter(
    cluster: SimulatorCluster, http: httpx.AsyncClient, name: str = "sim", api_key: str | None = None
) -> OpenAIBatchAdapter:
    config = ProviderConfig(
        name=name, kind="openai", base_url=cluster.base_url(name), models=["gpt-4o-mini"], timeout_s=5
    )
    return OpenAIBatchAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY)


@pytest.fixture
def adapter(cluster: SimulatorCluster, http: httpx.AsyncClient) -> OpenAIBatchAdapter:
    return make_adapter(cluster, http)


def shard_of(folder: Path, count: int = 50) -> ShardSubmission:
    return write_shard(folder, questions(count, MODEL), MODEL)


# --------------------------------------------------------------------------- lifecycle


async def test_submit_poll_fetch_round_trip(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("sim", fail_fraction=0.2)
    shard = shard_of(tmp_path)
    submitted = await adapter.submit(shard)
    assert submitted.provider_batch_id.startswith("batch_")
    assert submitted.provider_file_id and submitted.provider_file_id.startswith("file-")
    first = await adapter.poll(submitted.provider_batch_id)
    assert first.state in (ProviderBatchState.QUEUED, ProviderBatchState.RUNNING)

    job = cluster.state("sim").jobs[submitted.provider_batch_id]
    assert job.metadata == {"batchgw_submit_token": shard.submit_token, "batchgw_shard_id": shard.shard_id}

    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.raw_status == "completed"
    assert final.total == 50 and final.completed + final.failed == 50 and 0 < final.failed < 50
    assert final.error is None

    dest = tmp_path / "results.jsonl"
    reported = await adapter.fetch_results(submitted.provider_batch_id, dest)
    lines = read_lines(dest)
    assert sorted(line["custom_id"] for line in lines) == [f"req-{i:03d}" for i in range(50)]
    assert all(set(line) == {"id", "custom_id", "response", "error"} for line in lines)
    statuses = [line["response"]["status_code"] for line in lines]
    assert statuses.count(200) == final.completed and statuses.count(500) == final.failed
    # The batch's own usage: what its successful answers used, failed ones billing nothing.
    usages = [line["response"]["body"]["usage"] for line in lines if line["response"]["status_code"] == 200]
    assert reported == BatchUsage(
        input=sum(usage["prompt_tokens"] for usage in usages),
        output=sum(usage["completion_tokens"] for usage in usages),
    )


async def test_failed_batch_reports_errors(adapter: OpenAIBatchAdapter, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\nnot json\n')
    shard = ShardSubmission("s", "t", CHAT, "gpt-4o-mini", path, 2)
    submitted = await adapter.submit(shard)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.FAILED
    assert final.error is not None
    assert "url_mismatch" in final.error and "(line 1)" in final.error and "invalid_json_line" in final.error


async def test_find_submitted(adapter: OpenAIBatchAdapter, tmp_path: Path) -> None:
    shard = shard_of(tmp_path, count=3)
    submitted = await adapter.submit(shard)
    found = await adapter.find_submitted(shard.submit_token)
    assert found is not None
    assert found.provider_batch_id == submitted.provider_batch_id
    assert found.provider_file_id == submitted.provider_file_id
    assert await adapter.find_submitted("tok-never-used") is None


async def test_withdrawn_after_the_upload_creates_nothing(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    asked: list[str] = []

    def may_create() -> bool:
        asked.append("asked")
        return False  # the worker lost its lease while the file was uploading

    shard = dataclasses.replace(shard_of(tmp_path, count=3), may_create=may_create)
    uploads_before = len(await calls(cluster, "sim", "POST", "/files"))
    creates_before = len(await calls(cluster, "sim", "POST", "/batches"))
    with pytest.raises(SubmitWithdrawn):
        await adapter.submit(shard)
    assert asked == ["asked"]
    assert len(await calls(cluster, "sim", "POST", "/files")) == uploads_before + 1
    assert len(await calls(cluster, "sim", "POST", "/batches")) == creates_before
    assert await adapter.find_submitted(shard.submit_token) is None
    # No batch will read the upload: it is deleted, not left at the provider.
    assert not [f for f in cluster.state("sim").files.files.values() if f.filename == upload_name(shard.submit_token)]


async def test_an_upload_carries_an_expiry_so_shard_inputs_do_not_pile_up(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    submitted = await adapter.submit(shard_of(tmp_path, count=3))
    assert submitted.provider_file_id is not None
    kept = cluster.state("sim").files.get(submitted.provider_file_id)
    assert kept.expires_at is not None and kept.expires_at - kept.created_at == UPLOAD_TTL_S


async def test_withdrawn_during_the_create_call_creates_nothing(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    """The lease held at the check before the create call and was lost right after it (a worker frozen there
    wakes past its lease): the create request's bytes are refused before they leave."""
    answers = iter([True])

    def may_create() -> bool:
        return next(answers, False)

    shard = dataclasses.replace(shard_of(tmp_path, count=3), may_create=may_create)
    creates_before = len(await calls(cluster, "sim", "POST", "/batches"))
    with pytest.raises(SubmitWithdrawn):
        await adapter.submit(shard)
    assert len(await calls(cluster, "sim", "POST", "/batches")) == creates_before
    assert await adapter.find_submitted(shard.submit_token) is None


async def test_find_submitted_follows_pages(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    shard = shard_of(tmp_path, count=1)
    oldest = await adapter.submit(shard)
    base = cluster.base_url("sim")

    async def create_other(index: int) -> int:
        body = {
            "input_file_id": oldest.provider_file_id,
            "endpoint": CHAT,
            "completion_window": "24h",
            "metadata": {"batchgw_submit_token": f"other-{index}"},
        }
        return (await http.post(f"{base}/batches", json=body)).status_code

    assert set(await asyncio.gather(*(create_other(index) for index in range(120)))) == {200}
    found = await adapter.find_submitted(shard.submit_token)
    assert found is not None and found.provider_batch_id == oldest.provider_batch_id
    assert len(await calls(cluster, "sim", "GET", "/batches")) == 2

    adapter.max_list_pages = 1
    assert await adapter.find_submitted(shard.submit_token) is None


async def test_cancel(adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path) -> None:
    cluster.set_faults("sim", stall=True)
    submitted = await adapter.submit(shard_of(tmp_path, count=5))
    await adapter.cancel(submitted.provider_batch_id)
    after = await adapter.poll(submitted.provider_batch_id)
    assert after.state in (ProviderBatchState.CANCELLING, ProviderBatchState.CANCELLED)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.CANCELLED
    await adapter.cancel(submitted.provider_batch_id)  # the emulator answers 409: already over, not an error
    await asyncio.sleep(0.1)
    assert 409 in [entry.status for entry in cluster.state("sim").log if entry.path.endswith("/cancel")]

    with pytest.raises(ProviderRejected) as info:
        await adapter.cancel("batch_does_not_exist")
    assert info.value.status_code == 404


# --------------------------------------------------------------------------- health and faults


async def test_health(adapter: OpenAIBatchAdapter, cluster: SimulatorCluster) -> None:
    report = await adapter.health()
    assert report.healthy and report.latency_s is not None and report.latency_s >= 0

    cluster.set_faults("sim", down="503")
    report = await adapter.health()
    assert not report.healthy and "503" in report.detail

    cluster.set_faults("sim", down="refuse")
    report = await adapter.health()
    assert not report.healthy and "sim" in report.detail
    with pytest.raises(ProviderUnavailable) as info:
        await adapter.poll("batch_x")
    assert not isinstance(info.value, ProviderRateLimited)

    cluster.set_faults("sim", down="off")
    assert (await adapter.health()).healthy


async def test_rate_limit_long_retry_after_raises_at_once(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster
) -> None:
    cluster.set_faults("sim", rate_limit_next=5, retry_after_s=30)
    with pytest.raises(ProviderRateLimited) as info:
        await adapter.poll("batch_x")
    assert info.value.retry_after_s == 30.0
    assert "429" in str(info.value) and "GET /batches/batch_x" in str(info.value)
    assert len(await calls(cluster, "sim", "GET", "/batches/batch_x")) == 1


async def test_rate_limit_short_retry_after_is_honoured(adapter: OpenAIBatchAdapter, cluster: SimulatorCluster) -> None:
    cluster.set_faults("sim", rate_limit_next=1, retry_after_s=1)
    started = time.monotonic()
    report = await adapter.find_submitted("tok-none")
    assert report is None
    assert time.monotonic() - started >= 0.9
    assert len(await calls(cluster, "sim", "GET", "/batches")) == 2


async def test_5xx_retried_then_unavailable(adapter: OpenAIBatchAdapter, cluster: SimulatorCluster) -> None:
    cluster.set_faults("sim", error_5xx_rate=1.0)
    with pytest.raises(ProviderUnavailable) as info:
        await adapter.poll("batch_x")
    assert "HTTP 500" in str(info.value)
    assert len(await calls(cluster, "sim", "GET", "/batches/batch_x")) == FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("fault", "warning"),
    [
        ("malformed_output_line", "line 1 of"),  # cut in half: not JSON
        ("nested_output_line", "line 1 of"),  # deeper than decoders go
    ],
)
async def test_an_unreadable_output_line_is_skipped_not_the_download(
    adapter: OpenAIBatchAdapter,
    cluster: SimulatorCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    warning: str,
) -> None:
    """The adapter passes the file on as the provider wrote it; collection's join skips the line it cannot read,
    saying which, and takes the other nine."""
    cluster.set_faults("sim", **{fault: True})
    shard = shard_of(tmp_path, count=10)
    submitted = await adapter.submit(shard)
    await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "raw.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest)
    assert len(dest.read_bytes().splitlines()) == 10 and adapter.results_as_sent
    paths = [tmp_path / name for name in ("out.jsonl", "err.jsonl", "moved.jsonl")]
    with caplog.at_level(logging.WARNING, logger="gateway.pipeline.joining"):
        results = split_results("b", shard.input_path, dest, *paths, "completed", None, "sim", False, as_sent=True)
    assert results.completed == 9 and len(read_lines(paths[0])) == 9
    warnings = [r.getMessage() for r in caplog.records if "skipped line" in r.getMessage()]
    assert len(warnings) == 1 and "provider sim" in warnings[0] and warning in warnings[0]


async def test_api_key_never_in_errors(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    good = make_adapter(cluster, http, "secure", api_key=SECRET)
    assert (await good.health()).healthy
    bad = make_adapter(cluster, http, "secure", api_key=WRONG_KEY)
    with pytest.raises(ProviderRejected) as info:
        await bad.poll("batch_x")
    message = str(info.value)
    assert info.value.status_code == 401
    assert "provider secure" in message and "GET /batches/batch_x" in message and "401" in message
    assert "Incorrect API key" in message
    assert WRONG_KEY not in message and "Bearer" not in message and WRONG_KEY not in repr(bad)
    report = await bad.health()
    assert not report.healthy and WRONG_KEY not in report.detail


# --------------------------------------------------------------------------- paths the emulator cannot provoke


def _mock_adapter(handler: Any) -> tuple[OpenAIBatchAdapter, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = ProviderConfig(name="mock", kind="openai", base_url="http://mock.invalid/v1")
    return OpenAIBatchAdapter(config=config, http=client, retry=FAST_RETRY), client


async def test_submit_after_lost_create_answer_does_not_duplicate(tmp_path: Path) -> None:
    created: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files":
            return httpx.Response(200, json={"id": "file-1", "object": "file"})
        if request.method == "POST" and request.url.path == "/v1/batches":
            body = msgspec.json.decode(request.content)
            created.append({"id": f"batch_{len(created)}", "metadata": body["metadata"], "input_file_id": "file-1"})
            return httpx.Response(502, json={"error": {"message": "bad gateway"}})
        if request.url.path == "/v1/batches":
            return httpx.Response(200, json={"object": "list", "data": created[::-1], "has_more": False})
        return httpx.Response(404)

    adapter, client = _mock_adapter(handler)
    async with client:
        result = await adapter.submit(shard_of(tmp_path, count=2))
    assert result.provider_batch_id == "batch_0" and len(created) == 1


async def test_interrupted_download_is_not_duplicated(tmp_path: Path) -> None:
    good = b'{"custom_id":"a","response":{"status_code":200,"body":{}}}\n'
    rest = b'{"custom_id":"b","error":{"code":"x","message":"y"}}\n'
    attempts = 0

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield good
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        if request.url.path == "/v1/batches/b1":
            return httpx.Response(200, json={"id": "b1", "status": "completed", "output_file_id": "file-o"})
        attempts += 1
        return httpx.Response(200, stream=Broken()) if attempts == 1 else httpx.Response(200, content=good + rest)

    adapter, client = _mock_adapter(handler)
    dest = tmp_path / "out.jsonl"
    dest.write_bytes(b'{"custom_id":"earlier"}\n')
    async with client:
        await adapter.fetch_results("b1", dest)
    assert [line["custom_id"] for line in read_lines(dest)] == ["earlier", "a", "b"]
    assert attempts == 2


async def test_a_file_without_a_last_newline_does_not_run_into_the_next(tmp_path: Path) -> None:
    files = {
        "/v1/files/file-o/content": b'{"custom_id":"a","response":{"status_code":200,"body":{}}}',
        "/v1/files/file-e/content": b'{"custom_id":"b","error":{"code":"x","message":"y"}}',
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/b1":
            batch = {"id": "b1", "status": "completed", "output_file_id": "file-o", "error_file_id": "file-e"}
            return httpx.Response(200, json=batch)
        return httpx.Response(200, content=files[request.url.path])

    adapter, client = _mock_adapter(handler)
    dest = tmp_path / "out.jsonl"
    async with client:
        await adapter.fetch_results("b1", dest)
    assert [line["custom_id"] for line in read_lines(dest)] == ["a", "b"]
    assert dest.read_bytes().endswith(b"}\n")


# --------------------------------------------------------------------------- registry


def _config(name: str, models: dict[str, str], **extra: Any) -> ProviderConfig:
    return ProviderConfig(name=name, kind="openai", base_url="http://127.0.0.1:1/v1", models=models, **extra)


async def test_registry(monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", SECRET)
    providers = {
        "off": _config("", {"m1": "off-m1"}, enabled=False),
        "a": _config("", {"m1": "a-m1"}, api_key_env="TEST_SIM_KEY"),
        "b": _config("", {"m1": "b-m1", "m2": "b-m2"}),
    }
    registry = ProviderRegistry.from_config(providers, http)
    assert registry.names() == ["a", "b"] and len(registry) == 2 and "off" not in registry
    assert registry.get("a").api_key == SECRET and registry.get("b").api_key is None
    assert registry.get("b").config.models == {"m1": "b-m1", "m2": "b-m2"}
    assert isinstance(registry.get("a"), OpenAIBatchAdapter)
    with pytest.raises(UnknownProvider, match="known providers: a, b"):
        registry.get("off")


async def test_unknown_kind(http: httpx.AsyncClient) -> None:
    assert ADAPTER_KINDS["openai"] is OpenAIBatchAdapter
    config = ProviderConfig(name="x", kind="carrier-pigeon", base_url="http://127.0.0.1:1")
    with pytest.raises(UnknownProviderKind, match=r"known kinds: .*openai"):
        build_adapter(config, http)
