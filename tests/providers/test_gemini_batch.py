"""GeminiBatchAdapter against the Gemini batch emulator on loopback, plus its pure wire transforms."""

from __future__ import annotations

import base64
import dataclasses
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.providers.base import (
    CapabilityNotSupported,
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitWithdrawn,
)
from gateway.providers.config import ProviderConfig
from gateway.providers.gemini_batch import GeminiBatchAdapter
from gateway.providers.registry import ADAPTER_KINDS, build_adapter
from gateway.simulator import ProviderSpec, SimulatorCluster, hash_fraction
from gateway.simulator.openai_protocol import chat_completion, embeddings
from tests.providers.support import CHAT, FAST_RETRY, calls, wait_terminal, write_shard
from tests.providers.support import read_lines as read_result_lines

MODEL = "gemini-2.5-flash"
EMBED = "gemini-embedding-001"
EMBEDDINGS = "/v1/embeddings"
SECRET = "gm-secret-5c2e81d7"
WRONG_KEY = "gm-wrong-key-0b44fe19"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="gem", kind="gemini", models=[MODEL, EMBED], api_key=SECRET, processing_delay_s=0.3),
        ProviderSpec(name="open", kind="gemini", models=[MODEL]),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def make_adapter(
    cluster: SimulatorCluster, http: httpx.AsyncClient, api_key: str | None = SECRET, **settings: Any
) -> GeminiBatchAdapter:
    config = ProviderConfig(name="gem", kind="gemini", base_url=cluster.base_url("gem"), models=[MODEL], timeout_s=5)
    return GeminiBatchAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY, **settings)


@pytest.fixture
def adapter(cluster: SimulatorCluster, http: httpx.AsyncClient) -> GeminiBatchAdapter:
    return make_adapter(cluster, http)


def chat_line(custom_id: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": messages, **extra},
    }


def standard_lines(count: int) -> list[dict[str, Any]]:
    lines = [chat_line(f"req-{i:03d}", [{"role": "user", "content": f"question {i}"}]) for i in range(count)]
    lines.append(
        chat_line(
            "sys-stop",
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "name the sea here"}],
            stop=["sea"],
            max_tokens=50,
        )
    )
    lines.append(chat_line("capped", [{"role": "user", "content": "a rather long question indeed"}], max_tokens=2))
    lines.append(chat_line("provider-rejects", [{"role": "system", "content": "only a system prompt"}]))
    lines.append(chat_line("untranslatable", [{"role": "user", "content": [{"type": "video_url", "url": "x"}]}]))
    return lines


def shard_of(folder: Path, lines: list[dict[str, Any]], endpoint: str = CHAT) -> ShardSubmission:
    return write_shard(folder, lines, MODEL, endpoint)


def read_lines(path: Path) -> dict[str, dict[str, Any]]:
    lines = read_result_lines(path)
    keyed = {line["custom_id"]: line for line in lines}
    assert len(keyed) == len(lines), "a custom_id appears twice"
    return keyed


async def run_round_trip(adapter: GeminiBatchAdapter, cluster: SimulatorCluster, tmp_path: Path) -> None:
    lines = standard_lines(6)
    shard = shard_of(tmp_path, lines)
    submitted = await adapter.submit(shard)
    assert submitted.provider_batch_id.startswith("batches/")
    status = await wait_terminal(adapter, submitted.provider_batch_id)
    assert status.state is ProviderBatchState.COMPLETED and status.raw_status == "BATCH_STATE_SUCCEEDED"
    assert (status.total, status.completed, status.failed) == (9, 8, 1)
    dest = tmp_path / f"out-{uuid.uuid4().hex[:6]}.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    results = read_lines(dest)
    assert set(results) == {line["custom_id"] for line in lines}
    for line in lines[:-2]:
        result = results[line["custom_id"]]
        assert result["error"] is None and result["response"]["status_code"] == 200
        body = result["response"]["body"]
        # The Gemini emulator answers what the OpenAI emulator would: same text, finish and tokens.
        direct = chat_completion(line["body"], [MODEL], line["custom_id"], 0)
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
        assert body["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert body["usage"][key] == direct["usage"][key]
    assert results["capped"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert results["sys-stop"]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: name the "
    rejected = results["provider-rejects"]["response"]
    assert rejected["status_code"] == 400 and rejected["body"]["error"]["code"] == "invalid_argument"
    untranslatable = results["untranslatable"]["response"]
    assert untranslatable["status_code"] == 400 and "video_url" in untranslatable["body"]["error"]["message"]
    assert untranslatable["body"]["error"]["param"] == "messages[0].content[0]"


# --------------------------------------------------------------------------- lifecycle


async def test_inline_round_trip(adapter: GeminiBatchAdapter, cluster: SimulatorCluster, tmp_path: Path) -> None:
    await run_round_trip(adapter, cluster, tmp_path)
    assert not await calls(cluster, "gem", "POST", "/upload/")
    create = await calls(cluster, "gem", "POST", ":batchGenerateContent")
    assert len(create) == 1 and create[0].detail["source"] is None


async def test_file_round_trip(cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path) -> None:
    adapter = make_adapter(cluster, http, inline_max_bytes=100)
    await run_round_trip(adapter, cluster, tmp_path)
    uploads = await calls(cluster, "gem", "POST", "/upload/v1beta/files")
    assert [e.status for e in uploads] == [200, 200] and uploads[1].detail["lines"] == 9
    assert (await calls(cluster, "gem", "POST", ":batchGenerateContent"))[0].detail["source"] is not None
    assert await calls(cluster, "gem", "GET", ":download")


async def test_find_submitted_by_display_name(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = make_adapter(cluster, http, list_page_size=2)
    shards = [shard_of(tmp_path, standard_lines(1)) for _ in range(5)]
    created = [await adapter.submit(shard) for shard in shards]
    assert created[0].provider_file_id is None
    found = await adapter.find_submitted(shards[0].submit_token)
    assert found is not None and found.provider_batch_id == created[0].provider_batch_id
    assert len(await calls(cluster, "gem", "GET", "/v1beta/batches")) == 3
    assert await adapter.find_submitted("never-used") is None
    limited = make_adapter(cluster, http, list_page_size=2, max_list_pages=1)
    assert await limited.find_submitted(shards[0].submit_token) is None

    by_file = make_adapter(cluster, http, inline_max_bytes=0)
    shard = shard_of(tmp_path, standard_lines(1))
    submitted = await by_file.submit(shard)
    found = await by_file.find_submitted(shard.submit_token)
    assert found == submitted and submitted.provider_file_id and submitted.provider_file_id.startswith("files/")


async def test_withdrawn_after_the_upload_creates_nothing(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = make_adapter(cluster, http, inline_max_bytes=0)  # always through an uploaded file
    shard = dataclasses.replace(shard_of(tmp_path, standard_lines(2)), may_create=lambda: False)
    uploads = len(await calls(cluster, "gem", "POST", "/upload/v1beta/files"))
    creates = len(await calls(cluster, "gem", "POST", ":batchGenerateContent"))
    with pytest.raises(SubmitWithdrawn):
        await adapter.submit(shard)
    assert len(await calls(cluster, "gem", "POST", "/upload/v1beta/files")) > uploads  # the file went up
    assert len(await calls(cluster, "gem", "POST", ":batchGenerateContent")) == creates
    assert await adapter.find_submitted(shard.submit_token) is None


async def test_cancel(adapter: GeminiBatchAdapter, cluster: SimulatorCluster, tmp_path: Path) -> None:
    cluster.set_faults("gem", stall=True)
    submitted = await adapter.submit(shard_of(tmp_path, standard_lines(3)))
    await adapter.cancel(submitted.provider_batch_id)
    status = await wait_terminal(adapter, submitted.provider_batch_id)
    assert status.state is ProviderBatchState.CANCELLED and status.error is None
    await adapter.cancel(submitted.provider_batch_id)  # already ended: refused by the provider, fine here
    assert [e.status for e in await calls(cluster, "gem", "POST", ":cancel")] == [200, 400]
    with pytest.raises(ProviderRejected) as info:
        await adapter.cancel("batches/does-not-exist")
    assert info.value.status_code == 404


async def test_expired_and_failed_per_request(
    adapter: GeminiBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("gem", fail_fraction=0.5)
    shard = shard_of(tmp_path, standard_lines(10)[:10])
    submitted = await adapter.submit(shard)
    await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "failed.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    failing = {f"req-{i:03d}" for i in range(10) if hash_fraction(f"req-{i:03d}") < 0.5}
    results = read_lines(dest)
    assert {cid for cid, line in results.items() if line["response"]["status_code"] == 500} == failing
    assert all(results[cid]["response"]["body"]["error"]["type"] == "server_error" for cid in failing)

    cluster.set_faults("gem", fail_fraction=0.0, expire=True)
    shard = shard_of(tmp_path, standard_lines(4))
    submitted = await adapter.submit(shard)
    status = await wait_terminal(adapter, submitted.provider_batch_id)
    assert status.state is ProviderBatchState.EXPIRED
    dest = tmp_path / "expired.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert list(read_lines(dest)) == ["untranslatable"]


async def test_malformed_result_line_skipped(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.set_faults("gem", malformed_output_line=True)
    adapter = make_adapter(cluster, http, inline_max_bytes=0)
    shard = shard_of(tmp_path, standard_lines(5)[:5])
    submitted = await adapter.submit(shard)
    await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="gateway.providers.gemini_batch"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert len(read_lines(dest)) == 4
    assert any("skipped line 1 of results file" in record.getMessage() for record in caplog.records)


async def test_an_inline_result_nested_too_deeply_is_skipped_and_the_others_are_read(
    cluster: SimulatorCluster, adapter: GeminiBatchAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.set_faults("gem", nested_output_line=True)
    shard = shard_of(tmp_path, standard_lines(5)[:5])
    submitted = await adapter.submit(shard)
    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        assert (await wait_terminal(adapter, submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED
        dest = tmp_path / "out.jsonl"
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    lines = read_lines(dest)
    assert len(lines) == 4 and all(line["response"]["status_code"] == 200 for line in lines.values())  # 5th: again
    assert "nested deeper than 256 levels" in caplog.text and "skipped inline result 1" in caplog.text


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "file"])
async def test_embeddings_round_trip_priced_by_gemini_token_counts(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, inline: bool
) -> None:
    adapter = make_adapter(cluster, http, **({} if inline else {"inline_max_bytes": 0}))
    texts = [f"document number {i}" for i in range(6)]
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS, "body": {"model": EMBED, "input": text}}
        for i, text in enumerate(texts)
    ]
    lines[1]["body"]["dimensions"] = 4
    lines[2]["body"]["encoding_format"] = "base64"
    lines[3]["body"]["input"] = ["two", "texts"]  # Gemini embeds one text per request: never sent
    shard = write_shard(tmp_path, lines, EMBED, EMBEDDINGS)
    submitted = await adapter.submit(shard)
    [create] = await calls(cluster, "gem", "POST", ":asyncBatchEmbedContent")
    assert create.status == 200 and (submitted.provider_file_id is None) is inline
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    by_id = read_lines(dest)
    assert sorted(by_id) == [f"e{i}" for i in range(6)]
    refused = by_id["e3"]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "input"
    for custom_id in ("e0", "e1", "e4", "e5"):
        index = int(custom_id[1:])
        expected = embeddings({"model": EMBED, "input": texts[index], **lines[index]["body"]}, [EMBED])
        body = by_id[custom_id]["response"]["body"]
        assert body["data"][0]["embedding"] == pytest.approx(expected["data"][0]["embedding"])
        assert body["usage"] == expected["usage"]  # Gemini's tokenCount, as the ledger prices it
    assert len(by_id["e1"]["response"]["body"]["data"][0]["embedding"]) == 4
    packed = by_id["e2"]["response"]["body"]["data"][0]["embedding"]
    vector = embeddings({"model": EMBED, "input": texts[2]}, [EMBED])["data"][0]["embedding"]
    assert struct.unpack(f"<{len(vector)}f", base64.b64decode(packed)) == pytest.approx(vector)


async def test_shards_of_other_endpoints_are_refused(adapter: GeminiBatchAdapter, tmp_path: Path) -> None:
    with pytest.raises(CapabilityNotSupported) as info:
        await adapter.submit(shard_of(tmp_path, standard_lines(1), endpoint="/v1/completions"))
    assert isinstance(info.value, ProviderRejected), "the engine fails a rejected shard instead of retrying it"
    bad = [chat_line("x", [{"role": "user", "content": [{"type": "video_url"}]}])]
    with pytest.raises(ProviderRejected, match="no request can be sent"):
        await adapter.submit(shard_of(tmp_path, bad))


# --------------------------------------------------------------------------- health and errors


async def test_health(adapter: GeminiBatchAdapter, cluster: SimulatorCluster) -> None:
    report = await adapter.health()
    assert report.healthy and "/v1beta/models" in report.detail and report.latency_s is not None
    cluster.set_faults("gem", down="503")
    report = await adapter.health()
    assert not report.healthy and "503" in report.detail
    cluster.set_faults("gem", down="refuse")
    assert not (await adapter.health()).healthy
    with pytest.raises(ProviderUnavailable):
        await adapter.poll("batches/x")
    cluster.set_faults("gem", down="off")
    assert (await adapter.health()).healthy


async def test_rate_limit_retry_info(adapter: GeminiBatchAdapter, cluster: SimulatorCluster) -> None:
    cluster.set_faults("gem", rate_limit_next=5, retry_after_s=30)
    with pytest.raises(ProviderRateLimited) as info:
        await adapter.poll("batches/x")
    assert info.value.retry_after_s == 30.0 and "429" in str(info.value)
    assert len(await calls(cluster, "gem", "GET", "/v1beta/batches/x")) == 1

    cluster.set_faults("gem", rate_limit_next=1, retry_after_s=1)
    started = time.monotonic()
    assert await adapter.find_submitted("nothing") is None
    assert time.monotonic() - started >= 0.9


async def test_5xx_retried_then_unavailable(adapter: GeminiBatchAdapter, cluster: SimulatorCluster) -> None:
    cluster.set_faults("gem", error_5xx_rate=1.0)
    with pytest.raises(ProviderUnavailable) as info:
        await adapter.poll("batches/x")
    assert "HTTP 500" in str(info.value) and not isinstance(info.value, ProviderRateLimited)
    assert len(await calls(cluster, "gem", "GET", "/v1beta/batches/x")) == FAST_RETRY.attempts


async def test_rejections_and_the_key_never_shows(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    with pytest.raises(ProviderRejected) as info:
        await make_adapter(cluster, http).poll("batches/missing")
    assert info.value.status_code == 404 and "not found" in str(info.value)
    bad = make_adapter(cluster, http, api_key=WRONG_KEY)
    with pytest.raises(ProviderRejected) as info:
        await bad.submit(shard_of(tmp_path, standard_lines(1)))
    assert info.value.status_code == 401 and "provider gem" in str(info.value)
    assert WRONG_KEY not in str(info.value) and WRONG_KEY not in repr(bad)
    report = await bad.health()
    assert not report.healthy and WRONG_KEY not in report.detail
    assert [e.status for e in await calls(cluster, "gem", "GET", "/v1beta/models")] == [401]


async def test_base_url_with_api_version(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    config = ProviderConfig(name="open", kind="gemini", base_url=cluster.base_url("open") + "/v1beta/")
    adapter = GeminiBatchAdapter(config=config, http=http)
    assert (await adapter.health()).healthy
    assert ADAPTER_KINDS["gemini"] is GeminiBatchAdapter
    assert isinstance(build_adapter(config, http), GeminiBatchAdapter)


# --------------------------------------------------------------------------- paths the emulator cannot provoke


def _mock_adapter(handler: Any) -> tuple[GeminiBatchAdapter, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = ProviderConfig(name="mock", kind="gemini", base_url="http://mock.invalid")
    return GeminiBatchAdapter(config=config, http=client, retry=FAST_RETRY), client


async def test_lost_create_answer_does_not_duplicate(tmp_path: Path) -> None:
    created: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(":batchGenerateContent"):
            display = msgspec.json.decode(request.content)["batch"]["display_name"]
            created.append({"name": f"batches/b{len(created)}", "metadata": {"displayName": display}})
            return httpx.Response(502, json={"error": {"code": 502, "message": "bad gateway", "status": "UNAVAILABLE"}})
        if request.url.path == "/v1beta/batches":
            return httpx.Response(200, json={"operations": created[::-1]})
        return httpx.Response(404)

    adapter, client = _mock_adapter(handler)
    async with client:
        result = await adapter.submit(shard_of(tmp_path, standard_lines(1)))
    assert result.provider_batch_id == "batches/b0" and len(created) == 1


async def test_job_state_spelling_and_metadata_output(tmp_path: Path) -> None:
    inline = [{"metadata": {}, "response": {"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}}]
    operation = {
        "name": "batches/j1",
        "done": True,
        "metadata": {
            "state": "JOB_STATE_SUCCEEDED",
            "model": "models/gemini-x",
            "batchStats": {"requestCount": "2", "successfulRequestCount": "2"},
            "output": {"inlinedResponses": {"inlinedResponses": inline * 2}},
        },
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=operation)

    adapter, client = _mock_adapter(handler)
    shard = shard_of(tmp_path, [*standard_lines(1)[:1], chat_line("second", [{"role": "user", "content": "x"}])])
    dest = tmp_path / "out.jsonl"
    async with client:
        status = await adapter.poll("batches/j1")
        await adapter.fetch_results("batches/j1", dest, input_path=shard.input_path)
    assert status.state is ProviderBatchState.COMPLETED and (status.total, status.completed) == (2, 2)
    results = read_lines(dest)
    # No metadata.key came back: the documented input order names the results.
    assert list(results) == ["req-000", "second"]
    assert results["second"]["response"]["body"]["choices"][0]["message"]["content"] == "hi"
    assert results["second"]["response"]["body"]["model"] == "gemini-x"


async def test_interrupted_download_is_not_duplicated(tmp_path: Path) -> None:
    good = b'{"key":"a","response":{"candidates":[]}}\n'
    rest = b'{"key":"b","error":{"code":3,"message":"bad"}}\n'
    attempts = 0

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield good
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        if request.url.path == "/v1beta/batches/f1":
            output = {"responsesFile": "files/r1"}
            return httpx.Response(200, json={"name": "batches/f1", "done": True, "response": output, "metadata": {}})
        assert request.url.path == "/download/v1beta/files/r1:download" and request.url.params["alt"] == "media"
        attempts += 1
        return httpx.Response(200, stream=Broken()) if attempts == 1 else httpx.Response(200, content=good + rest)

    adapter, client = _mock_adapter(handler)
    dest = tmp_path / "out.jsonl"
    dest.write_bytes(b'{"custom_id":"earlier"}\n')
    async with client:
        await adapter.fetch_results("f1", dest)
    assert list(read_lines(dest)) == ["earlier", "a", "b"] and attempts == 2
    assert read_lines(dest)["b"]["response"]["status_code"] == 400


async def test_google_400_for_an_invalid_key_is_an_auth_failure(tmp_path: Path) -> None:
    # Google answers a key it does not accept with 400 INVALID_ARGUMENT and an ErrorInfo reason, not 401.
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    body = {"error": {"code": 400, "message": f"API key not valid: {WRONG_KEY}.", "status": "INVALID_ARGUMENT",
                      "details": [info]}}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = ProviderConfig(name="mock", kind="gemini", base_url="http://mock.invalid", api_key_env="GEMINI_KEY")
    adapter = GeminiBatchAdapter(config=config, http=client, api_key=WRONG_KEY, retry=FAST_RETRY)
    async with client:
        with pytest.raises(ProviderAuthFailed) as info_:
            await adapter.poll("batches/x")
    message = str(info_.value)
    assert info_.value.status_code == 400 and "check the key in GEMINI_KEY" in message and WRONG_KEY not in message
