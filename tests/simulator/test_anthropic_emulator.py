"""The Anthropic Message Batches emulator over real loopback HTTP, judged by the official SDK (strict)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from gateway.simulator import ProviderSpec, SimulatorCluster, hash_fraction, prompt_tokens
from gateway.simulator.config import parse_config
from gateway.simulator.provider_server import driver_for
from tests.conftest import loopback

KEY = "sk-ant-test"
MODEL = "claude-haiku-4-5"
DAY_S = 86_400


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="main", kind="anthropic", models=[MODEL], api_key=KEY),
        ProviderSpec(name="slow", kind="anthropic", models=[MODEL], processing_delay_s=1.0),
    ]
    with SimulatorCluster(specs, control_port=0) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    for name in cluster.names():
        cluster.reset(name)


@pytest.fixture(scope="module")
def client(cluster: SimulatorCluster) -> anthropic.Anthropic:
    return sdk(cluster, "main")


def sdk(cluster: SimulatorCluster, name: str, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=cluster.base_url(name), api_key=key, max_retries=0, _strict_response_validation=True
    )


def req(custom_id: str, text: str, **params: Any) -> Any:
    body = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": text}], **params}
    return {"custom_id": custom_id, "params": body}


def many(count: int) -> list[Any]:
    return [req(f"r-{i:03d}", f"question number {i}") for i in range(count)]


def wait(
    client: anthropic.Anthropic, batch_id: str, until: Callable[[MessageBatch], bool] | None = None
) -> MessageBatch:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = client.messages.batches.retrieve(batch_id)
        if until(batch) if until else batch.processing_status == "ended":
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} stuck in {batch.processing_status}")


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, MessageBatchIndividualResponse]:
    return {line.custom_id: line for line in client.messages.batches.results(batch_id)}


def raw_get(cluster: SimulatorCluster, path: str, **headers: str) -> httpx.Response:
    base = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    return loopback.get(f"{cluster.base_url('main')}{path}", headers={**base, **headers}, timeout=10)


# --- the full flow -------------------------------------------------------------------------------------


def test_full_flow_with_deterministic_messages(client: anthropic.Anthropic) -> None:
    requests = [
        req("plain", "Capital of Peru?", system="Answer tersely."),
        req("stopped", "first. second", stop_sequences=[". s", "zzz"]),
        req("capped", "a question that is long enough", max_tokens=2),
        req("blocks", "ignored", messages=[{"role": "user", "content": [{"type": "text", "text": "from blocks"}]}]),
    ]
    created = client.messages.batches.create(requests=requests)
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 4 and created.ended_at is None
    assert (created.expires_at - created.created_at).total_seconds() == DAY_S
    ended = wait(client, created.id)
    assert ended.ended_at is not None and ended.cancel_initiated_at is None and ended.archived_at is None
    assert ended.results_url == f"{str(client.base_url).rstrip('/')}/v1/messages/batches/{created.id}/results"
    assert ended.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 4,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    got = results(client, created.id)
    plain = got["plain"].result
    assert plain.type == "succeeded"
    assert plain.message.content[0].type == "text" and plain.message.content[0].text == "Echo: Capital of Peru?"
    assert plain.message.stop_reason == "end_turn" and plain.message.usage.service_tier == "batch"
    assert plain.message.usage.input_tokens == prompt_tokens(["Answer tersely.", "Capital of Peru?"])
    stopped = got["stopped"].result
    assert stopped.type == "succeeded" and stopped.message.stop_reason == "stop_sequence"
    assert stopped.message.stop_sequence == ". s" and stopped.message.content[0].text == "Echo: first"  # type: ignore[union-attr]
    capped = got["capped"].result
    assert capped.type == "succeeded" and capped.message.stop_reason == "max_tokens"
    assert capped.message.usage.output_tokens == 2
    assert got["blocks"].result.type == "succeeded"
    assert got["blocks"].result.message.content[0].text == "Echo: from blocks"  # type: ignore[union-attr]
    assert client.messages.batches.delete(created.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)


def test_counts_stay_processing_until_the_end(cluster: SimulatorCluster) -> None:
    slow = sdk(cluster, "slow")
    created = slow.messages.batches.create(requests=many(6))
    time.sleep(0.5)
    running = slow.messages.batches.retrieve(created.id)
    assert running.processing_status == "in_progress" and running.request_counts.processing == 6
    assert cluster.state("slow").jobs[created.id].outcomes, "some requests already ran"
    with pytest.raises(anthropic.BadRequestError):
        slow.messages.batches.delete(created.id)
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        list(slow.messages.batches.results(created.id))
    assert wait(slow, created.id).request_counts.succeeded == 6


def test_invalid_params_error_asynchronously(client: anthropic.Anthropic) -> None:
    requests = [
        req("ok", "fine"),
        req("no-model", "x", model="claude-nope"),
        req("openai-field", "x", n=2),
        req("too-long", "x", max_tokens=100_000),
        req("zero", "x", max_tokens=0),
        req("bad-temp", "x", temperature=1.5),
        req("bad-role", "x", messages=[{"role": "system", "content": "x"}]),
    ]
    created = client.messages.batches.create(requests=requests)
    ended = wait(client, created.id)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 6)
    got = results(client, created.id)
    kinds = {cid: line.result.error.error.type for cid, line in got.items() if line.result.type == "errored"}
    assert kinds.pop("no-model") == "not_found_error"
    assert set(kinds.values()) == {"invalid_request_error"}
    assert "Extra inputs" in got["openai-field"].result.error.error.message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "requests",
    [
        [req("has space", "x")],
        [req("x" * 65, "x")],
        [req("dup", "x"), req("dup", "y")],
        [{"custom_id": "no-params"}],
        [],
    ],
)
def test_create_time_checks(client: anthropic.Anthropic, requests: list[Any]) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(requests=requests)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_auth_version_header_and_unknown_ids(cluster: SimulatorCluster) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk(cluster, "main", key="wrong").messages.batches.list()
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert raw_get(cluster, "/v1/messages/batches").status_code == 200  # the documented x-api-key header
    missing = loopback.get(f"{cluster.base_url('main')}/v1/messages/batches", headers={"x-api-key": KEY})
    assert missing.status_code == 400 and "anthropic-version" in missing.json()["error"]["message"]
    unknown = raw_get(cluster, "/v1/messages/batches/msgbatch_nope")
    assert unknown.status_code == 404 and unknown.json()["type"] == "error"


def test_list_pagination_newest_first(client: anthropic.Anthropic) -> None:
    ids = [client.messages.batches.create(requests=many(1)).id for _ in range(5)]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more and first.last_id == ids[3]
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]  # auto-paging via after_id
    before = client.messages.batches.list(limit=2, before_id=ids[1])
    assert [b.id for b in before.data] == [ids[3], ids[2]] and before.has_more


# --- faults --------------------------------------------------------------------------------------------


def test_refused_connection_and_503(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    cluster.set_faults("main", down="refuse")
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.batches.list()
    cluster.set_faults("main", down="503")
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.batches.list()
    assert caught.value.status_code == 503 and caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    cluster.set_faults("main", down="off")
    assert client.messages.batches.list().data == []


def test_rate_limit_server_errors_and_latency(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    cluster.set_faults("main", rate_limit_next=1, retry_after_s=7)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.batches.list()
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    cluster.set_faults("main", error_5xx_rate=1.0)
    with pytest.raises(anthropic.InternalServerError) as server:
        client.messages.batches.list()
    assert server.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    cluster.set_faults("main", error_5xx_rate=0.0, latency_s=0.3)
    started = time.monotonic()
    client.messages.batches.list()
    assert time.monotonic() - started >= 0.3


def test_fail_fraction_errors_chosen_ids_with_api_error(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    cluster.set_faults("main", fail_fraction=0.5)
    requests = many(20)
    created = client.messages.batches.create(requests=requests)
    got = results(client, wait(client, created.id).id)
    failing = {r["custom_id"] for r in requests if hash_fraction(r["custom_id"]) < 0.5}
    assert failing and {cid for cid, line in got.items() if line.result.type == "errored"} == failing
    assert {got[cid].result.error.error.type for cid in failing} == {"api_error"}  # type: ignore[union-attr]


def test_shuffle_and_order(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    requests = many(12)
    shuffled = client.messages.batches.create(requests=requests)
    assert list(results(client, wait(client, shuffled.id).id)) != [r["custom_id"] for r in requests]
    cluster.set_faults("main", shuffle_output=False)
    ordered = client.messages.batches.create(requests=requests)
    assert list(results(client, wait(client, ordered.id).id)) == [r["custom_id"] for r in requests]


def test_expire_fault_gives_expired_results(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    cluster.set_faults("main", expire=True, expire_after_fraction=0.5, shuffle_output=False)
    created = client.messages.batches.create(requests=many(10))
    ended = wait(client, created.id)
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (5, 5)
    assert [line.result.type for line in results(client, created.id).values()] == ["succeeded"] * 5 + ["expired"] * 5


def test_malformed_result_line(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    cluster.set_faults("main", malformed_output_line=True)
    created = client.messages.batches.create(requests=many(3))
    wait(client, created.id)
    lines = raw_get(cluster, f"/v1/messages/batches/{created.id}/results").text.splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert [json.loads(line)["result"]["type"] for line in lines[1:]] == ["succeeded", "succeeded"]


def test_stall_cancel_and_clock_expiry(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    cluster.set_faults("main", stall=True)
    stalled = client.messages.batches.create(requests=many(4))
    time.sleep(0.2)
    assert client.messages.batches.retrieve(stalled.id).processing_status == "in_progress"
    cancelling = client.messages.batches.cancel(stalled.id)
    assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at is not None
    cancelled = wait(client, stalled.id)
    assert cancelled.request_counts.canceled == 4 and cancelled.cancel_initiated_at is not None
    assert {line.result.type for line in results(client, stalled.id).values()} == {"canceled"}
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.cancel(stalled.id)
    late = client.messages.batches.create(requests=many(3))
    cluster.state("main").clock.advance(DAY_S + 1)
    assert wait(client, late.id).request_counts.expired == 3
    cluster.set_faults("main", stall=False)
    cluster.state("main").clock.advance(29 * DAY_S)
    archived = client.messages.batches.retrieve(late.id)
    assert archived.archived_at is not None
    assert raw_get(cluster, f"/v1/messages/batches/{late.id}/results").status_code == 404


def test_config_kind_and_driver() -> None:
    config = parse_config('[[provider]]\nname = "claude"\nkind = "anthropic"\nmodels = ["claude-haiku-4-5"]\n')
    assert config.providers[0].kind == "anthropic"
    assert driver_for(config.providers[0]).kind == "anthropic"
