"""The Anthropic-compatible Message Batches endpoint, judged by the official ``anthropic`` SDK with strict
response validation, against a ``batchgw serve`` process whose providers are an OpenAI-protocol emulator
(gpt-4o-mini, and a slow one serving llama-3.3-70b) and the Message Batches emulator (claude-haiku)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import ENGINE_ENV, GatewayProcess, loopback

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

CLAUDE_KEY = "sk-ant-front-door-51c2"
CLAUDE = "claude-haiku"
CLAUDE_PROVIDER_MODEL = "claude-haiku-4-5"
MAX_BODY = 2_000_000
"""The gateway's limits.max_upload_bytes here: the largest create body it takes."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="oai", models=["gpt-4o-mini"], processing_delay_s=0.3),
        ProviderSpec(name="slow", models=["llama-3.3-70b"], processing_delay_s=120),
        ProviderSpec(
            name="claude-sim",
            kind="anthropic",
            models=[CLAUDE_PROVIDER_MODEL],
            api_key=CLAUDE_KEY,
            processing_delay_s=0.3,
        ),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, cluster: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    path = tmp_path_factory.mktemp("providers") / "providers.toml"
    path.write_text(
        f'[providers.openai]\nkind = "openai"\nbase_url = {json.dumps(cluster.base_url("oai"))}\n'
        'models = { "gpt-4o-mini" = "gpt-4o-mini" }\n'
        f'[providers.slow]\nkind = "openai"\nbase_url = {json.dumps(cluster.base_url("slow"))}\n'
        'models = { "llama-3.3-70b" = "llama-3.3-70b" }\n'
        f'[providers.claude]\nkind = "anthropic"\nbase_url = {json.dumps(cluster.base_url("claude-sim"))}\n'
        'api_key_env = "CLAUDE_SIM_KEY"\n'
        f"models = {{ {json.dumps(CLAUDE)} = {json.dumps(CLAUDE_PROVIDER_MODEL)} }}\n",
        encoding="utf-8",
    )
    limit = {"BATCHGW_LIMITS__MAX_UPLOAD_BYTES": str(MAX_BODY)}
    env = {"BATCHGW_CONFIG_FILE": str(path), "CLAUDE_SIM_KEY": CLAUDE_KEY, **ENGINE_ENV, **limit}
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def claude(gateway: GatewayProcess, team_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=team_key, _strict_response_validation=True)


def params(model: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **fields}


def wait_ended(claude: anthropic.Anthropic, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = claude.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still {batch.processing_status}"
        time.sleep(0.3)


WEATHER = {"name": "weather", "description": "Weather of a city", "input_schema": {"type": "object"}}
REQUESTS = [
    {"custom_id": "openai-plain", "params": params("gpt-4o-mini", "Capital of Peru?", system="Answer tersely.")},
    {
        "custom_id": "openai-tools",
        "params": {
            "model": "gpt-4o-mini",
            "max_tokens": 32,
            "system": [{"type": "text", "text": "Use tools."}],
            "tools": [WEATHER],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "Weather in Lima?"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Lima"}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                        {"type": "text", "text": "Summarise."},
                    ],
                },
            ],
        },
    },
    {"custom_id": "claude-plain", "params": params(CLAUDE, "Hello there", temperature=0.2, stop_sequences=["END"])},
    {"custom_id": "claude-capped", "params": params(CLAUDE, "a question long enough to be cut short", max_tokens=2)},
    {"custom_id": "claude-stopped", "params": params(CLAUDE, "hello there my friend", stop_sequences=["friend"])},
    {"custom_id": "unknown-model", "params": params("gpt-9-imaginary", "hi")},
    {"custom_id": "no-max-tokens", "params": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}},
    {"custom_id": "top-k", "params": params(CLAUDE, "hi", top_k=5)},
    {"custom_id": "params-text", "params": "not an object"},
]


def test_one_batch_runs_on_both_protocols_and_reads_back_as_anthropic_results(
    claude: anthropic.Anthropic, client: openai.OpenAI
) -> None:
    created = claude.messages.batches.create(requests=REQUESTS)  # type: ignore[arg-type]
    assert created.type == "message_batch" and created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == len(REQUESTS) and created.request_counts.succeeded == 0

    ended = wait_ended(claude, created.id)
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 5, 4, 0, 0)
    assert ended.ended_at is not None and ended.results_url.endswith(f"/v1/messages/batches/{created.id}/results")

    results = {entry.custom_id: entry.result for entry in claude.messages.batches.results(created.id)}
    assert set(results) == {r["custom_id"] for r in REQUESTS}
    for custom_id in ("openai-plain", "openai-tools", "claude-plain", "claude-capped", "claude-stopped"):
        result = results[custom_id]
        assert result.type == "succeeded", (custom_id, result)
        message = result.message
        assert message.type == "message" and message.role == "assistant" and message.usage.output_tokens > 0
        assert message.content and message.content[0].type == "text" and message.content[0].text
    assert results["claude-capped"].message.stop_reason == "max_tokens"  # type: ignore[union-attr]
    stopped = results["claude-stopped"].message  # type: ignore[union-attr]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "friend")
    plain = results["claude-plain"].message  # type: ignore[union-attr]
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)
    assert results["claude-plain"].message.model == CLAUDE_PROVIDER_MODEL  # type: ignore[union-attr]
    assert results["openai-plain"].message.model.startswith("gpt-4o-mini")  # type: ignore[union-attr]
    errored = ("unknown-model", "no-max-tokens", "top-k", "params-text")
    errors = {cid: results[cid].error.error for cid in errored}  # type: ignore[union-attr]
    assert errors["unknown-model"].type == "not_found_error" and "gpt-9-imaginary" in errors["unknown-model"].message
    assert errors["no-max-tokens"].type == "invalid_request_error"
    assert errors["no-max-tokens"].message == "params.max_tokens: must be an integer >= 1"
    assert errors["params-text"].message == "params: 'params' must be an object."
    assert errors["top-k"].type == "invalid_request_error" and "top_k" in errors["top-k"].message

    # The same work is an ordinary batch underneath: both providers ran their part of it.
    batch = client.batches.retrieve(created.id.replace("msgbatch_", "batch_"))
    assert batch.metadata is not None
    assert set(batch.metadata["gateway_providers"].split(",")) == {"openai", "claude"}


def test_list_pages_both_ways_and_delete_hides_a_batch(claude: anthropic.Anthropic, client: openai.OpenAI) -> None:
    ids = [
        claude.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": params("gpt-4o-mini", "hi")}]).id
        for i in range(3)
    ]
    first = claude.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == [ids[2], ids[1]] and first.has_more
    assert first.first_id == ids[2] and first.last_id == ids[1]
    following = claude.messages.batches.list(limit=2, after_id=ids[1])
    assert following.data[0].id == ids[0]
    back = claude.messages.batches.list(limit=1, before_id=ids[1])
    assert [b.id for b in back.data] == [ids[2]]
    assert ids[0] in [b.id for b in claude.messages.batches.list(limit=2)]  # auto-pagination
    ended = wait_ended(claude, ids[0])
    twin = ended.id.replace("msgbatch_", "batch_")  # the same work as OpenAI's API shows it
    for _ in range(2):  # read twice: the second answer is the one a status read keeps
        assert client.batches.retrieve(twin).status == "completed"
    deleted = claude.messages.batches.delete(ended.id)
    assert (deleted.id, deleted.type) == (ended.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.batches.retrieve(ended.id)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert ended.id not in [b.id for b in claude.messages.batches.list(limit=1000).data]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(twin)
    assert twin not in [b.id for b in client.batches.list(limit=100)]
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel(twin)


def test_a_message_batch_s_files_are_neither_listed_nor_deletable_through_the_files_api(
    claude: anthropic.Anthropic, client: openai.OpenAI
) -> None:
    requests = [{"custom_id": f"f{i}", "params": params("gpt-4o-mini", "hi")} for i in range(3)]
    created = claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    wait_ended(claude, created.id)
    twin = client.batches.retrieve(created.id.replace("msgbatch_", "batch_"))
    assert twin.output_file_id is not None
    held = {twin.input_file_id, twin.output_file_id}
    assert not held & {file.id for file in client.files.list()}, "a clean-up of the listed files would take them"
    for file_id in held:
        with pytest.raises(openai.ConflictError) as refused:
            client.files.delete(file_id)
        assert refused.value.code == "file_in_use"
        assert f"DELETE /v1/messages/batches/{created.id}" in refused.value.message
        assert client.files.retrieve(file_id).id == file_id  # the ids the twin names still answer
    results = {entry.custom_id: entry.result.type for entry in claude.messages.batches.results(created.id)}
    assert results == {"f0": "succeeded", "f1": "succeeded", "f2": "succeeded"}


def test_cancel_ends_unrun_requests_canceled(claude: anthropic.Anthropic) -> None:
    created = claude.messages.batches.create(
        requests=[{"custom_id": f"slow-{i}", "params": params("llama-3.3-70b", "hi")} for i in range(3)]
    )
    with pytest.raises(anthropic.BadRequestError) as running:
        claude.messages.batches.delete(created.id)
    assert "cancel it first" in running.value.body["error"]["message"]  # type: ignore[index]
    time.sleep(1.0)  # let it reach the provider
    cancelling = claude.messages.batches.cancel(created.id)
    assert cancelling.processing_status in ("canceling", "ended") and cancelling.cancel_initiated_at is not None
    ended = wait_ended(claude, created.id)
    assert ended.request_counts.canceled == 3 and ended.request_counts.succeeded == 0
    results = list(claude.messages.batches.results(created.id))
    assert sorted(r.custom_id for r in results) == ["slow-0", "slow-1", "slow-2"]
    assert {r.result.type for r in results} == {"canceled"}


@pytest.mark.parametrize(
    ("body", "status", "kind", "says"),
    [
        (
            {"requests": [{"custom_id": "has space", "params": {}}]},
            400,
            "invalid_request_error",
            "requests.0.custom_id",
        ),
        (
            {"requests": [{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}]},
            400,
            "invalid_request_error",
            "Duplicate custom_id",
        ),
        ({"requests": []}, 400, "invalid_request_error", "at least one request"),
        ({"requests": [{"custom_id": "a"}]}, 400, "invalid_request_error", "requests.0.params"),
        ({"requests": [{"params": {}}]}, 400, "invalid_request_error", "requests.0.custom_id: Field required"),
        ({"requests": [], "extra": 1}, 400, "invalid_request_error", "extra"),
        ({}, 400, "invalid_request_error", "requests: Field required"),
        ([1, 2], 400, "invalid_request_error", "JSON object"),
    ],
)
def test_bad_bodies_are_refused_in_anthropic_shape(
    gateway: GatewayProcess, team_key: str, body: Any, status: int, kind: str, says: str
) -> None:
    response = loopback.post(
        f"{gateway.base_url}/v1/messages/batches", json=body, headers={"x-api-key": team_key}, timeout=30
    )
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == kind and says in error["error"]["message"]
    assert error["request_id"].startswith("req_") and response.headers["request-id"] == error["request_id"]


def test_not_json_and_auth_and_unknown_ids(gateway: GatewayProcess, team_key: str, claude: anthropic.Anthropic) -> None:
    url = f"{gateway.base_url}/v1/messages/batches"
    broken = loopback.post(url, content=b'{"requests": [', headers={"x-api-key": team_key}, timeout=30)
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    nobody = loopback.get(url, timeout=30)
    assert nobody.status_code == 401 and nobody.json()["error"]["type"] == "authentication_error"
    wrong = anthropic.Anthropic(base_url=gateway.base_url, api_key="bgw-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.batches.list()
    for unknown in ("msgbatch_doesnotexist", "batch_x", "%00"):
        with pytest.raises(anthropic.NotFoundError):
            claude.messages.batches.retrieve(unknown)
    running = claude.messages.batches.create(requests=[{"custom_id": "a", "params": params("llama-3.3-70b", "hi")}])
    early = loopback.get(f"{url}/{running.id}/results", headers={"x-api-key": team_key}, timeout=30)
    assert early.status_code == 409 and early.json()["error"]["type"] == "conflict_error"
    claude.messages.batches.cancel(running.id)


def test_a_request_nested_too_deep_is_errored_not_a_crash(gateway: GatewayProcess, team_key: str) -> None:
    deep = "[" * 100_000 + '"x"' + "]" * 100_000  # written out: encoders recurse per level
    fine = json.dumps({"custom_id": "fine", "params": params("gpt-4o-mini", "hi")})
    raw = '{"requests": [{"custom_id": "deep", "params": {"model": "gpt-4o-mini", "max_tokens": 5, "messages": '
    raw += deep + "}}, " + fine + "]}"
    response = loopback.post(
        f"{gateway.base_url}/v1/messages/batches", content=raw, headers={"x-api-key": team_key}, timeout=30
    )
    assert response.status_code == 200, response.text
    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key=team_key)
    ended = wait_ended(claude, response.json()["id"])
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
    results = {r.custom_id: r.result for r in claude.messages.batches.results(ended.id)}
    assert results["deep"].type == "errored" and "nested more than" in results["deep"].error.error.message  # type: ignore[union-attr]


def test_a_body_over_the_upload_limit_is_413_announced_or_streamed(gateway: GatewayProcess, team_key: str) -> None:
    request = json.dumps({"custom_id": "r", "params": params("gpt-4o-mini", "x" * 1000)})
    count = MAX_BODY // len(request) + 10
    body = ('{"requests": [' + ",".join(request.replace('"r"', f'"r{i}"') for i in range(count)) + "]}").encode()
    url = f"{gateway.base_url}/v1/messages/batches"
    announced = loopback.post(url, content=body, headers={"x-api-key": team_key}, timeout=30)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the streamed bytes pass the limit
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    streamed = loopback.post(url, content=chunks(), headers={"x-api-key": team_key}, timeout=30)
    for response in (announced, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["type"] == "request_too_large"


def test_an_idempotency_key_returns_the_first_batch(gateway: GatewayProcess, team_key: str) -> None:
    url = f"{gateway.base_url}/v1/messages/batches"
    headers = {"x-api-key": team_key, "Idempotency-Key": f"nightly-{time.time_ns()}"}
    body = {"requests": [{"custom_id": "once", "params": params("gpt-4o-mini", "hi")}]}
    first = loopback.post(url, json=body, headers=headers, timeout=30)
    again = loopback.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    other = loopback.post(url, json={"requests": [{"custom_id": "two", "params": {}}]}, headers=headers, timeout=30)
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict_error"
