"""AnthropicBatchAdapter against the Anthropic Message Batches emulator on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from openai.types.chat import ChatCompletion

from gateway.providers.anthropic_batch import LOCAL_BATCH_PREFIX, AnthropicBatchAdapter
from gateway.providers.base import (
    ProviderBatchState,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitWithdrawn,
)
from gateway.providers.config import ProviderConfig
from gateway.providers.registry import ADAPTER_KINDS, build_adapter
from gateway.simulator import ProviderSpec, SimulatorCluster, prompt_tokens
from tests.providers.support import FAST_RETRY, calls, chat_line, questions, wait_terminal, write_shard

MODEL = "claude-haiku-4-5"
SECRET = "sk-ant-secret-5d1e7b"
UNSAFE_IDS = ["has space", "x" * 80, "ünïcode", "m_" + "0" * 40]
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Lima"}'}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="claude", kind="anthropic", models=[MODEL], api_key=SECRET),
        ProviderSpec(name="slow", kind="anthropic", models=[MODEL], api_key=SECRET, processing_delay_s=0.6),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def make_adapter(
    cluster: SimulatorCluster, http: httpx.AsyncClient, name: str = "claude", api_key: str | None = SECRET
) -> AnthropicBatchAdapter:
    config = ProviderConfig(name=name, kind="anthropic", base_url=cluster.base_url(name), models=[MODEL], timeout_s=5)
    return AnthropicBatchAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY)


@pytest.fixture
def adapter(cluster: SimulatorCluster, http: httpx.AsyncClient) -> AnthropicBatchAdapter:
    return make_adapter(cluster, http)


def line(custom_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return chat_line(custom_id, text, fields.pop("model", MODEL), **fields)


async def fetch(adapter: AnthropicBatchAdapter, batch_id: str, shard: ShardSubmission) -> dict[str, dict[str, Any]]:
    dest = shard.input_path.with_suffix(".out")
    await adapter.fetch_results(batch_id, dest, input_path=shard.input_path)
    lines = [msgspec.json.decode(raw) for raw in dest.read_bytes().splitlines()]
    assert all(set(entry) == {"id", "custom_id", "response", "error"} for entry in lines)
    return {entry["custom_id"]: entry for entry in lines}


# --------------------------------------------------------------------------- lifecycle


async def test_round_trip_with_unsafe_ids_and_rejections(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    lines = [line(cid, f"question {i}") for i, cid in enumerate(UNSAFE_IDS)]
    lines += [
        line("system", "Capital of Peru?", max_tokens=50),
        line("untranslatable", "x", n=3),
        line("unknown-model", "x", model="claude-nope"),
        line("stopped", "one. two", stop=". t"),
        line("capped", "a long question to cut", max_completion_tokens=2),
        line("tools", "Weather?", tools=[TOOL], tool_choice="auto", parallel_tool_calls=False),
    ]
    lines[-1]["body"]["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And here?"}, IMAGE]},
    ]
    lines[4]["body"]["messages"].insert(0, {"role": "system", "content": "Answer tersely."})
    shard = write_shard(tmp_path, lines, MODEL)
    submitted = await adapter.submit(shard)
    assert submitted.provider_batch_id.startswith("msgbatch_")
    job = cluster.state("claude").jobs[submitted.provider_batch_id]
    sent = [item.custom_id for item in job.items]
    assert len(sent) == len(lines) - 1 and "untranslatable" not in sent and "system" in sent
    assert all(cid.startswith("m_") and len(cid) == 42 for cid in sent[: len(UNSAFE_IDS)])

    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert (final.state, final.raw_status, final.total, final.completed, final.failed) == (
        ProviderBatchState.COMPLETED, "ended", len(lines) - 1, len(lines) - 2, 1,
    )  # fmt: skip
    assert job.items[-1].body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    got = await fetch(adapter, submitted.provider_batch_id, shard)
    assert sorted(got) == sorted(entry["custom_id"] for entry in lines)
    for cid in [*UNSAFE_IDS, "system", "stopped", "capped", "tools"]:
        response = got[cid]["response"]
        assert response["status_code"] == 200 and got[cid]["error"] is None
        ChatCompletion.model_validate(response["body"], strict=True)
    answer = got["system"]["response"]["body"]
    assert answer["id"].startswith("msg_") and answer["object"] == "chat.completion" and answer["model"] == MODEL
    assert answer["choices"][0]["message"]["content"] == "Echo: Capital of Peru?"
    assert answer["usage"]["prompt_tokens"] == prompt_tokens(["Answer tersely.", "Capital of Peru?"])
    # The stop string that ended the reply is kept where vLLM's OpenAI-compatible server names it.
    assert got["stopped"]["response"]["body"]["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "Echo: one", "refusal": None},
        "logprobs": None, "finish_reason": "stop", "stop_reason": ". t",
    }  # fmt: skip
    assert got["capped"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert got["tools"]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: And here?"
    assert got["capped"]["response"]["body"]["usage"]["completion_tokens"] == 2
    rejected = got["untranslatable"]["response"]
    assert rejected["status_code"] == 400 and rejected["body"]["error"]["param"] == "n"
    missing = got["unknown-model"]["response"]
    assert missing["status_code"] == 404 and missing["body"]["error"]["code"] == "not_found_error"
    assert len({entry["id"] for entry in got.values()}) == len(got)


async def test_default_max_tokens_is_configurable(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = make_adapter(cluster, http)
    adapter.default_max_tokens = 3
    shard = write_shard(tmp_path, [line("a", "a question longer than three tokens")], MODEL)
    batch_id = (await adapter.submit(shard)).provider_batch_id
    assert cluster.state("claude").jobs[batch_id].items[0].body["max_tokens"] == 3
    await wait_terminal(adapter, batch_id)
    assert (await fetch(adapter, batch_id, shard))["a"]["response"]["body"]["choices"][0]["finish_reason"] == "length"


async def test_shard_with_nothing_to_send(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    shard = write_shard(tmp_path, [line("a", "x", n=2), line("b", "x", logprobs=True)], MODEL)
    batch_id = (await adapter.submit(shard)).provider_batch_id
    assert batch_id.startswith(LOCAL_BATCH_PREFIX) and not cluster.state("claude").jobs
    assert (await adapter.poll(batch_id)).state is ProviderBatchState.COMPLETED
    await adapter.cancel(batch_id)
    got = await fetch(adapter, batch_id, shard)
    assert {cid: entry["response"]["status_code"] for cid, entry in got.items()} == {"a": 400, "b": 400}


async def test_running_counts_cancel_and_cancelled_lines(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    adapter = make_adapter(cluster, http, "slow")
    cluster.set_faults("slow", stall=True)
    shard = write_shard(tmp_path, questions(5, MODEL), MODEL)
    batch_id = (await adapter.submit(shard)).provider_batch_id
    running = await adapter.poll(batch_id)
    assert (running.state, running.total, running.completed, running.failed) == (ProviderBatchState.RUNNING, 5, 0, 0)
    await adapter.cancel(batch_id)
    cancelled = await wait_terminal(adapter, batch_id)
    assert (cancelled.state, cancelled.failed) == (ProviderBatchState.CANCELLED, 5)
    await adapter.cancel(batch_id)  # already ended: a no-op, not an error
    got = await fetch(adapter, batch_id, shard)
    assert {entry["error"]["code"] for entry in got.values()} == {"batch_cancelled"}
    assert all(entry["response"] is None for entry in got.values())


async def test_window_expiry_maps_to_expired(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("claude", stall=True)
    shard = write_shard(tmp_path, questions(3, MODEL), MODEL)
    batch_id = (await adapter.submit(shard)).provider_batch_id
    cluster.state("claude").clock.advance(86_401)
    assert (await wait_terminal(adapter, batch_id)).state is ProviderBatchState.EXPIRED
    got = await fetch(adapter, batch_id, shard)
    assert {entry["error"]["code"] for entry in got.values()} == {"batch_expired"}


async def test_malformed_result_line_is_skipped(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("claude", malformed_output_line=True)
    shard = write_shard(tmp_path, questions(4, MODEL), MODEL)
    batch_id = (await adapter.submit(shard)).provider_batch_id
    await wait_terminal(adapter, batch_id)
    assert len(await fetch(adapter, batch_id, shard)) == 3


# --------------------------------------------------------------------------- reconciliation


async def test_find_submitted_knows_only_what_this_process_saw(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    shard = write_shard(tmp_path, questions(2, MODEL), MODEL)
    submitted = await adapter.submit(shard)
    assert await adapter.find_submitted(shard.submit_token) == submitted
    assert await adapter.find_submitted("another-token") is None
    # A restarted process has no record, and listing cannot tell same-sized batches apart: it resubmits.
    assert await make_adapter(cluster, http).find_submitted(shard.submit_token) is None


async def test_withdrawn_submission_creates_nothing(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    shard = dataclasses.replace(write_shard(tmp_path, questions(2, MODEL), MODEL), may_create=lambda: False)
    before = len(await calls(cluster, "claude", "POST", "/batches"))
    with pytest.raises(SubmitWithdrawn):
        await adapter.submit(shard)
    assert len(await calls(cluster, "claude", "POST", "/batches")) == before
    assert await adapter.find_submitted(shard.submit_token) is None


async def test_withdrawn_after_the_create_request_started_creates_nothing(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    """The lease is lost once the create request's head has gone out: its body is refused, the provider gets
    a request cut off, and no batch exists."""
    answers = iter([True, True])  # the check before the call, then the request's head

    def may_create() -> bool:
        return next(answers, False)

    shard = dataclasses.replace(write_shard(tmp_path, questions(2, MODEL), MODEL), may_create=may_create)
    with pytest.raises(SubmitWithdrawn):
        await adapter.submit(shard)
    for _ in range(20):  # a call cut off is logged once the emulator notices its client left
        if logged := await calls(cluster, "claude", "POST", "/batches"):
            break
    [cut_off] = logged
    assert cut_off.status == 499  # the emulator saw the request start and its client leave before the body
    assert cluster.state("claude").jobs == {}


# --------------------------------------------------------------------------- wire and errors


async def test_headers_and_streamed_create_body(cluster: SimulatorCluster, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        adapter = make_adapter(cluster, http)
        await adapter.submit(write_shard(tmp_path, questions(3, MODEL), MODEL))
    create = seen[0]
    assert create.headers["x-api-key"] == SECRET and create.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in create.headers and "transfer-encoding" not in create.headers
    assert int(create.headers["content-length"]) > 0


async def test_errors_are_typed_and_redacted(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    with pytest.raises(ProviderRejected) as rejected:
        await adapter.poll("msgbatch_unknown")
    assert rejected.value.status_code == 404 and "not_found_error" in str(rejected.value)
    wrong = make_adapter(cluster, http, api_key="sk-ant-wrong-key")
    with pytest.raises(ProviderRejected) as denied:
        await wrong.submit(write_shard(tmp_path, questions(1, MODEL), MODEL))
    assert denied.value.status_code == 401 and "sk-ant-wrong-key" not in str(denied.value)
    cluster.set_faults("claude", rate_limit_next=5, retry_after_s=30)
    with pytest.raises(ProviderRateLimited) as limited:
        await adapter.poll("msgbatch_any")
    assert limited.value.retry_after_s == 30 and "rate_limit_error" in str(limited.value)
    cluster.set_faults("claude", rate_limit_next=0, down="503")
    with pytest.raises(ProviderUnavailable):
        await adapter.submit(write_shard(tmp_path, questions(1, MODEL), MODEL))
    cluster.set_faults("claude", down="off")
    with pytest.raises(ProviderRejected):
        await adapter.submit(ShardSubmission("s", "t", "/v1/embeddings", MODEL, tmp_path / "none", 0))


async def test_transient_failures_are_retried(
    adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("claude", rate_limit_next=1, retry_after_s=0)
    submitted = await adapter.submit(write_shard(tmp_path, questions(2, MODEL), MODEL))
    assert list(cluster.state("claude").jobs) == [submitted.provider_batch_id]


async def test_health(adapter: AnthropicBatchAdapter, cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    healthy = await adapter.health()
    assert healthy.healthy and "HTTP 200" in healthy.detail
    bad_key = await make_adapter(cluster, http, api_key="sk-ant-nope").health()
    assert not bad_key.healthy and "401" in bad_key.detail and "sk-ant-nope" not in bad_key.detail
    cluster.set_faults("claude", down="refuse")
    assert not (await adapter.health()).healthy
    cluster.set_faults("claude", down="off")


def test_registry_builds_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", "k")
    config = ProviderConfig(
        name="claude", kind="anthropic", base_url="https://api.anthropic.com/", api_key_env="ANTHROPIC_TEST_KEY"
    )
    built = build_adapter(config, httpx.AsyncClient())
    assert ADAPTER_KINDS["anthropic"] is AnthropicBatchAdapter
    assert isinstance(built, AnthropicBatchAdapter) and built.api_key == "k"


def test_results_url_on_another_host_is_not_trusted() -> None:
    config = ProviderConfig(name="claude", kind="anthropic", base_url="https://api.anthropic.com")
    adapter = AnthropicBatchAdapter(config=config, http=httpx.AsyncClient(), api_key="k")
    own = "https://api.anthropic.com/v1/messages/batches/b1/results"
    assert adapter._results_url({"results_url": own}, "b1") == own
    assert adapter._results_url({"results_url": "https://evil.example/r"}, "b1") == own
    with pytest.raises(ProviderUnavailable):
        adapter._results_url({"results_url": None, "processing_status": "in_progress"}, "b1")
