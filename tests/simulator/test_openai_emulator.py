"""The OpenAI Files + Batches emulator over real loopback HTTP, judged by the official SDK."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from gateway.simulator import (
    ProviderSpec,
    SimulatorCluster,
    embedding_vector,
    model_reply,
    prompt_tokens,
    simulate_chat,
    text_tokens,
)
from gateway.simulator.config import default_config, parse_config
from tests.simulator.openai_emulators import (
    CHAT,
    HTTP,
    KEY,
    chat_line,
    jsonl,
    lines_of,
    sdk,
    submit,
    upload,
    wait,
)

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
