"""The OpenAI Files + Batches emulator over real loopback HTTP, judged by the official SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
import msgspec
import openai
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from gateway.simulator import (
    Faults,
    ProviderSpec,
    SimulatorCluster,
    embedding_vector,
    hash_fraction,
    model_reply,
    prompt_tokens,
    simulate_chat,
    text_tokens,
)
from gateway.simulator.config import default_config, parse_config

KEY = "sk-test"
CHAT: Final = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="main", models=["gpt-4o-mini", "llama-3.3-70b", "text-embedding-3-small"], api_key=KEY),
        ProviderSpec(name="slow", models=["gpt-4o-mini"], processing_delay_s=1.5),
    ]
    with SimulatorCluster(specs, control_port=0) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    for name in cluster.names():
        control(cluster, "POST", f"/providers/{name}/reset").raise_for_status()


@pytest.fixture(scope="module")
def client(cluster: SimulatorCluster) -> openai.OpenAI:
    return sdk(cluster, "main")


def sdk(cluster: SimulatorCluster, name: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url(name), api_key=key, max_retries=0, _strict_response_validation=True)


def control(cluster: SimulatorCluster, method: str, path: str, body: Any = None) -> httpx.Response:
    return HTTP.request(method, f"{cluster.control_url}{path}", json=body)


def set_faults(cluster: SimulatorCluster, name: str = "main", **faults: Any) -> dict[str, Any]:
    response = control(cluster, "POST", f"/providers/{name}/faults", faults)
    assert response.status_code == 200, response.text
    return response.json()


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def lines_of(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [chat_line(f"req-{i:03d}", f"question number {i}", **extra) for i in range(count)]


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str], name: str = "in.jsonl") -> FileObject:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    return client.files.create(file=(name, text.encode()), purpose="batch")


def submit(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str], **kwargs: Any) -> Batch:
    file = upload(client, lines)
    endpoint = kwargs.pop("endpoint", CHAT)
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kwargs)


def wait(client: openai.OpenAI, batch_id: str, until: Callable[[Batch], bool] | None = None) -> Batch:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch) if until else batch.status in TERMINAL:
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} stuck in {batch.status}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


# --- the deterministic model -----------------------------------------------------------------------------


def test_token_formula_and_reply_rules() -> None:
    assert text_tokens("") == 0 and text_tokens("abcd") == 1 and text_tokens("abcde") == 2
    assert prompt_tokens(["Answer tersely.", "Capital of Peru?"]) == 8 + 2 * 3  # ceil(31 / 4) + 3 per message
    reply = model_reply(["hi there"], "hi there")
    assert (reply.content, reply.finish_reason, reply.completion_tokens) == ("Echo: hi there", "stop", 4)
    capped = model_reply(["x"], "a long question to echo", max_tokens=2)
    assert (capped.content, capped.finish_reason, capped.completion_tokens) == ("Echo: a ", "length", 2)
    stopped = model_reply(["x"], "one. two. three", stop=[". t", "zzz"])
    assert (stopped.content, stopped.finish_reason) == ("Echo: one", "stop")
    body = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}
    assert simulate_chat(body) == simulate_chat(dict(body)) and simulate_chat(body).content == "Echo: q"
    assert embedding_vector("a") == embedding_vector("a") != embedding_vector("b")
    assert len(embedding_vector("a", 40)) == 40 and all(-1 <= v <= 1 for v in embedding_vector("a"))


# --- the full flow ---------------------------------------------------------------------------------------


def test_full_flow_with_deterministic_output(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    lines = lines_of(18)
    lines.append(chat_line("capped", "a question that is long enough", max_tokens=2))
    lines.append(chat_line("stopped", "first. second", stop=". s", max_completion_tokens=50))
    lines[0]["body"]["messages"].insert(0, {"role": "system", "content": "Answer tersely."})
    file = upload(client, lines)
    assert (file.purpose, file.status, file.filename, file.object) == ("batch", "processed", "in.jsonl", "file")
    assert client.files.retrieve(file.id) == file
    assert file.id in [f.id for f in client.files.list()]
    metadata = {"gateway_tag": "shard-7f3a", "long": "v" * 512}
    raw = client.batches.with_raw_response.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata=metadata
    )
    assert raw.headers["x-request-id"].startswith("req_")
    created = raw.parse()
    assert created.status == "validating" and created.metadata == metadata
    assert created.request_counts is not None and created.request_counts.total == 0

    batch = wait(client, created.id)
    assert batch.status == "completed" and batch.metadata == metadata and batch.model == "gpt-4o-mini"
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at
    assert batch.failed_at is None and batch.error_file_id is None and batch.errors is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (20, 20, 0)
    assert client.files.retrieve(batch.output_file_id or "").purpose == "batch_output"

    output = jsonl(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    assert [o["custom_id"] for o in output] != [line["custom_id"] for line in lines], "shuffled by default"
    by_id = {o["custom_id"]: o for o in output}
    expected_in = expected_out = 0
    for line in lines:
        result = by_id[line["custom_id"]]
        assert result["id"].startswith("batch_req_") and result["error"] is None
        assert result["response"]["status_code"] == 200 and result["response"]["request_id"].startswith("req_")
        completion = ChatCompletion.model_validate(result["response"]["body"])
        reply = simulate_chat(line["body"])
        assert completion.model == "gpt-4o-mini" and completion.id.startswith("chatcmpl-")
        assert completion.choices[0].message.content == reply.content
        assert completion.choices[0].finish_reason == reply.finish_reason
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
            reply.prompt_tokens, reply.completion_tokens,
        )  # fmt: skip
        expected_in += reply.prompt_tokens
        expected_out += reply.completion_tokens
    assert by_id["capped"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert by_id["stopped"]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: first"
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (expected_in, expected_out)
    assert batch.usage.total_tokens == expected_in + expected_out

    def answers(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {r["custom_id"]: {**r["response"]["body"], "created": None} for r in rows}

    again = wait(client, submit(client, lines).id)
    assert answers(output) == answers(jsonl(client, again.output_file_id)), "same requests, same answers"


def test_list_pagination_newest_first(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    file = upload(client, lines_of(1))
    ids = [
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"n": str(i)}).id
        for i in range(5)
    ]
    page = HTTP.get(f"{cluster.base_url('main')}/batches?limit=2", headers={"Authorization": f"Bearer {KEY}"})
    body = page.json()
    assert (body["object"], body["has_more"], body["first_id"], body["last_id"]) == ("list", True, ids[4], ids[3])
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-pagination over after=
    last = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
    assert [b.metadata for b in client.batches.list(limit=100)] == [{"n": str(i)} for i in range(4, -1, -1)]


def test_embeddings_batch(client: openai.OpenAI) -> None:
    lines = [
        {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": ["alpha", "beta gamma"]}},
        {"custom_id": "e2", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": "delta", "dimensions": 3}},
    ]  # fmt: skip
    batch = wait(client, submit(client, lines, endpoint="/v1/embeddings").id)
    assert batch.status == "completed"
    results = {o["custom_id"]: o["response"]["body"] for o in jsonl(client, batch.output_file_id)}
    assert results["e1"]["data"][1]["embedding"] == embedding_vector("beta gamma")
    assert results["e1"]["usage"] == {"prompt_tokens": 2 + 3, "total_tokens": 5}
    assert results["e2"]["data"][0]["embedding"] == embedding_vector("delta", 3)


def test_invalid_requests_go_to_the_error_file(client: openai.OpenAI) -> None:
    lines = [
        chat_line("fine", "hello"),
        chat_line("zero", "hello", max_tokens=0),
        chat_line("streaming", "hello", stream=True),
        {"custom_id": "no-messages", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini"}},
    ]
    batch = wait(client, submit(client, lines).id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 3)
    errors = {e["custom_id"]: e for e in jsonl(client, batch.error_file_id)}
    assert set(errors) == {"zero", "streaming", "no-messages"}
    for line in errors.values():
        assert line["error"] is None and line["response"]["status_code"] == 400
        assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert errors["zero"]["response"]["body"]["error"]["param"] == "max_tokens"
    assert [o["custom_id"] for o in jsonl(client, batch.output_file_id)] == ["fine"]


def test_unserved_model_fails_every_request(client: openai.OpenAI) -> None:
    batch = wait(client, submit(client, lines_of(3, model="gpt-5")).id)
    assert batch.status == "completed" and batch.output_file_id is None
    codes = {e["response"]["body"]["error"]["code"] for e in jsonl(client, batch.error_file_id)}
    assert codes == {"model_not_found"}


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        ([json.dumps(chat_line("a", "x")), "{not json"], "invalid_json_line", 2),
        ([chat_line("a", "x"), chat_line("a", "y")], "duplicate_custom_id", 2),
        ([chat_line("a", "x"), {**chat_line("b", "y"), "url": "/v1/embeddings"}], "url_mismatch", 2),
        ([chat_line("a", "x"), chat_line("b", "y", model="llama-3.3-70b")], "model_mismatch", 2),
        ([json.dumps(chat_line(f"r{i}", "q")) for i in range(50_001)], "too_many_tasks", None),
    ],
    ids=["invalid-json", "duplicate-id", "url-mismatch", "two-models", "over-50000-lines"],
)
def test_validation_failures(client: openai.OpenAI, lines: list[Any], code: str, line: int | None) -> None:
    batch = wait(client, submit(client, lines).id)
    assert batch.status == "failed" and batch.failed_at and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == (code, line)
    assert batch.output_file_id is None and batch.error_file_id is None


def test_file_and_create_errors(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("a.csv", b"{}\n"), purpose="batch")
    state = cluster.state("main")
    state.max_file_bytes = 100
    try:
        with pytest.raises(openai.APIStatusError) as big:
            client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        assert big.value.status_code == 413
    finally:
        state.max_file_bytes = ProviderSpec(name="x").max_file_bytes
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-missing")
    file = upload(client, lines_of(1))
    assert client.files.delete(file.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.content(file.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    file = upload(client, lines_of(1))
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="48h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as meta:
        too_many = {f"k{i}": "v" for i in range(17)}
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata=too_many)
    assert isinstance(meta.value.body, dict) and meta.value.body["param"] == "metadata"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")


def test_auth_is_required(cluster: SimulatorCluster) -> None:
    with pytest.raises(openai.AuthenticationError) as denied:
        sdk(cluster, "main", key="sk-wrong").files.list()
    assert isinstance(denied.value.body, dict) and denied.value.body["code"] == "invalid_api_key"
    assert sdk(cluster, "slow", key="anything").batches.list().data == []


def test_cancel_keeps_partial_results(cluster: SimulatorCluster) -> None:
    slow = sdk(cluster, "slow")
    created = submit(slow, lines_of(20))
    wait(slow, created.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 3)
    cancelling = slow.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = wait(slow, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at and batch.request_counts is not None
    done, failed = batch.request_counts.completed, batch.request_counts.failed
    assert 3 <= done < 20 and done + failed == 20
    assert len(jsonl(slow, batch.output_file_id)) == done
    errors = jsonl(slow, batch.error_file_id)
    assert len(errors) == failed and {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors)
    with pytest.raises(openai.ConflictError):
        slow.batches.cancel(created.id)


# --- faults, switched through the control API -------------------------------------------------------


def test_refused_connection_and_recovery(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    port = cluster.port_of("main")
    set_faults(cluster, down="refuse")
    with pytest.raises(openai.APIConnectionError):
        client.files.list()
    listed = {p["name"]: p for p in control(cluster, "GET", "/providers").json()}
    assert listed["main"]["listening"] is False and listed["main"]["faults"]["down"] == "refuse"
    set_faults(cluster, down="off")
    assert client.files.list().data == [] and cluster.port_of("main") == port


def test_outage_answers_503(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, down="503")
    with pytest.raises(openai.InternalServerError) as outage:
        client.batches.list()
    assert outage.value.status_code == 503 and outage.value.response.headers["x-request-id"]
    assert isinstance(outage.value.body, dict) and outage.value.body["type"] == "server_error"


def test_rate_limit_with_retry_after(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, rate_limit_next=2, retry_after_s=7)
    raw = HTTP.get(f"{cluster.base_url('main')}/files", headers={"Authorization": f"Bearer {KEY}"})
    assert raw.status_code == 429 and raw.headers["retry-after"] == "7"
    assert raw.json()["error"]["code"] == "rate_limit_exceeded" and raw.json()["error"]["param"] is None
    with pytest.raises(openai.RateLimitError):
        client.files.list()
    client.files.list()
    set_faults(cluster, rate_limit_rate=1.0)
    with pytest.raises(openai.RateLimitError):
        client.files.list()


def test_server_errors_and_latency(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, error_5xx_rate=1.0)
    with pytest.raises(openai.InternalServerError) as failure:
        client.files.list()
    assert failure.value.status_code == 500
    set_faults(cluster, error_5xx_rate=0.0, latency_s=0.3)
    start = time.monotonic()
    client.files.list()
    assert time.monotonic() - start >= 0.3


def test_fail_fraction_fails_chosen_ids(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, fail_fraction=0.5)
    lines = lines_of(40)
    batch = wait(client, submit(client, lines).id)
    expected = {line["custom_id"] for line in lines if hash_fraction(line["custom_id"]) < 0.5}
    errors = jsonl(client, batch.error_file_id)
    assert {e["custom_id"] for e in errors} == expected and 0 < len(expected) < 40
    assert {(e["response"]["status_code"], e["response"]["body"]["error"]["type"]) for e in errors} == {
        (500, "server_error")
    }
    assert batch.request_counts is not None and batch.request_counts.failed == len(expected)


def test_output_order_without_shuffle(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, shuffle_output=False)
    lines = lines_of(15)
    batch = wait(client, submit(client, lines).id)
    assert [o["custom_id"] for o in jsonl(client, batch.output_file_id)] == [x["custom_id"] for x in lines]


def test_expiry_mid_batch(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, expire=True, expire_after_fraction=0.5)
    batch = wait(client, submit(client, lines_of(10)).id)
    assert batch.status == "expired" and batch.expired_at and batch.completed_at is None
    assert len(jsonl(client, batch.output_file_id)) == 5
    errors = jsonl(client, batch.error_file_id)
    assert len(errors) == 5 and all(e["response"] is None for e in errors)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_malformed_output_line(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, malformed_output_line=True)
    batch = wait(client, submit(client, lines_of(6)).id)
    broken = 0
    for text in client.files.content(batch.output_file_id or "").text.splitlines():
        try:
            json.loads(text)
        except json.JSONDecodeError:
            broken += 1
    assert broken == 1


def test_stall_then_release_and_clock_expiry(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, stall=True)
    first, second = submit(client, lines_of(4)), submit(client, lines_of(4))
    time.sleep(0.4)
    for batch_id in (first.id, second.id):
        stalled = client.batches.retrieve(batch_id)
        assert stalled.status == "in_progress" and stalled.request_counts is not None
        assert stalled.request_counts.completed == 0
    control(cluster, "POST", "/providers/main/clock", {"advance_s": 25 * 3600}).raise_for_status()
    expired = wait(client, first.id)
    assert expired.status == "expired" and len(jsonl(client, expired.error_file_id)) == 4
    control(cluster, "POST", "/providers/main/reset").raise_for_status()
    third = submit(client, lines_of(3))
    cluster.state("main").faults.stall = True  # in-process switch works too
    set_faults(cluster, stall=False)
    assert wait(client, third.id).status == "completed"


# --- the control server ---------------------------------------------------------------------------------


def test_control_api(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    listed = control(cluster, "GET", "/providers").json()
    assert [(p["name"], p["port"]) for p in listed] == [(n, cluster.port_of(n)) for n in ("main", "slow")]
    assert listed[0]["faults"] == msgspec.to_builtins(Faults()) and listed[0]["listening"] is True
    bad = control(cluster, "POST", "/providers/main/faults", {"no_such_fault": 1})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert control(cluster, "POST", "/providers/main/faults", {"fail_fraction": 2}).status_code == 400
    assert control(cluster, "GET", "/providers/nope/log").status_code == 404
    batch = wait(client, submit(client, lines_of(3), metadata={"tag": "t-1"}).id)
    entries = control(cluster, "GET", "/providers/main/log").json()["data"]
    create = next(e for e in entries if e["method"] == "POST" and e["path"] == "/v1/batches")
    assert create["status"] == 200 and create["detail"]["metadata"] == {"tag": "t-1"}
    assert create["detail"]["input_lines"] == 3 and create["detail"]["batch_id"] == batch.id
    assert all(e["request_id"].startswith("req_") for e in entries)
    stats = control(cluster, "GET", "/providers/main/stats").json()
    assert (stats["files_uploaded"], stats["batches_created"], stats["requests_processed"]) == (1, 1, 3)
    assert stats["batches"] == {"completed": 1}
    cluster.set_faults("main", fail_fraction=1.0)
    assert cluster.state("main").faults.fail_fraction == 1.0
    cluster.reset("main")
    assert cluster.state("main").faults == Faults() and not cluster.state("main").jobs


def test_config_parsing() -> None:
    config = parse_config(
        """
        control_port = 9200
        [[provider]]
        name = "groq-sim"
        models = ["llama-3.3-70b"]
        port = 9201
        api_key = "k"
        [provider.faults]
        fail_fraction = 0.25
        """
    )
    assert config.control_port == 9200 and config.providers[0].faults.fail_fraction == 0.25
    assert config.providers[0].kind == "openai" and config.providers[0].api_key == "k"
    default = default_config()
    assert (default.control_port, default.providers[0].name, default.providers[0].port) == (9100, "openai-sim", 9101)
    assert default.providers[0].models == ["gpt-4o-mini", "llama-3.3-70b"]
    for text in ('[[provider]]\nname = "a"\nbogus = 1', '[[provider]]\nname = "a"\n[[provider]]\nname = "a"'):
        with pytest.raises(ValueError):
            parse_config(text)
