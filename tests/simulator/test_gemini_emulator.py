"""The Gemini batch-mode emulator over real loopback HTTP: documented shapes, both input variants, every fault."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import msgspec
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster, embedding_vector, hash_fraction, model_reply, text_tokens
from gateway.simulator.openai_protocol import embeddings
from tests.conftest import loopback

KEY = "gm-test-key"
MODEL = "gemini-2.5-flash"
EMBED_MODEL = "gemini-embedding-001"
PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."
GENERATE, EMBED = "batchGenerateContent", "asyncBatchEmbedContent"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(name="gem", kind="gemini", models=[MODEL, "gemini-2.5-pro", EMBED_MODEL], api_key=KEY)
    with SimulatorCluster([spec], control_port=0) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    cluster.reset("gem")


@pytest.fixture
def http(cluster: SimulatorCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.base_url("gem"), headers={"x-goog-api-key": KEY}, timeout=10) as client:
        yield client


def request(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


def embed_request(*texts: str, **fields: Any) -> dict[str, Any]:
    """An EmbedContentRequest as the SDK sends it (one Content, role included)."""
    return {"content": {"role": "user", "parts": [{"text": text} for text in texts]}, **fields}


def create_embed_inline(http: httpx.Client, requests: list[dict[str, Any]]) -> dict[str, Any]:
    listed = [{"request": r, "metadata": {"key": f"k{i}"}} for i, r in enumerate(requests)]
    batch = {"displayName": "vectors", "inputConfig": {"requests": {"requests": listed}}}
    response = http.post(f"/v1beta/models/{EMBED_MODEL}:{EMBED}", json={"batch": batch})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def openai_embedding(text: str) -> tuple[list[float], int]:
    """The vector and prompt tokens the OpenAI emulator's embeddings give for one text."""
    body = embeddings({"model": "text-embedding-3-small", "input": text}, ["text-embedding-3-small"])
    return body["data"][0]["embedding"], body["usage"]["prompt_tokens"]


def create_inline(http: httpx.Client, requests: list[dict[str, Any]], model: str = MODEL) -> httpx.Response:
    listed = [{"request": r, "metadata": {"key": f"k{i}"}} for i, r in enumerate(requests)]
    batch = {"display_name": "nightly", "input_config": {"requests": {"requests": listed}}}
    return http.post(f"/v1beta/models/{model}:batchGenerateContent", json={"batch": batch})


def upload(http: httpx.Client, data: bytes, name: str = "input") -> str:
    start = http.post(
        "/upload/v1beta/files",
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        },
        json={"file": {"display_name": name}},
    )
    assert start.status_code == 200 and start.headers["x-goog-upload-status"] == "active"
    done = http.post(
        start.headers["x-goog-upload-url"],
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
        content=data,
    )
    assert done.status_code == 200, done.text
    assert done.headers["x-goog-upload-status"] == "final"
    return str(done.json()["file"]["name"])


def create_file(http: httpx.Client, requests: list[dict[str, Any]], method: str = GENERATE) -> dict[str, Any]:
    lines = b"".join(msgspec.json.encode({"key": f"k{i}", "request": r}) + b"\n" for i, r in enumerate(requests))
    # Generate batches spell the input camelCase, embeddings batches snake_case as the SDK does.
    source = {"fileName": upload(http, lines)} if method == GENERATE else {"file_name": upload(http, lines)}
    batch = {"displayName": "from-file", "inputConfig": source}
    model = MODEL if method == GENERATE else EMBED_MODEL
    response = http.post(f"/v1beta/models/{model}:{method}", json={"batch": batch})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_done(http: httpx.Client, name: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = http.get(f"/v1beta/{name}").json()
        if operation["done"]:
            return operation  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"{name} did not finish")


def download(http: httpx.Client, file_name: str) -> list[bytes]:
    response = http.get(f"/download/v1beta/{file_name}:download", params={"alt": "media"})
    assert response.status_code == 200
    return response.content.splitlines()


def google_error(response: httpx.Response, code: int, status: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status and error["message"]
    return error  # type: ignore[no-any-return]


def rfc3339(stamp: str) -> datetime:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp)


# --------------------------------------------------------------------------- shapes


def test_inline_batch_operation_and_results(http: httpx.Client) -> None:
    texts = ["first question", "second", "third one here"]
    created = create_inline(http, [request(t) for t in texts])
    assert created.status_code == 200, created.text
    operation = created.json()
    name, metadata = operation["name"], operation["metadata"]
    assert name.startswith("batches/") and operation["done"] is False and "response" not in operation
    assert metadata["@type"] == PREFIX + "GenerateContentBatch" and metadata["name"] == name
    assert metadata["model"] == f"models/{MODEL}" and metadata["displayName"] == "nightly"
    assert metadata["state"] == "BATCH_STATE_PENDING"
    assert metadata["batchStats"] == {
        "requestCount": "3", "successfulRequestCount": "0", "failedRequestCount": "0", "pendingRequestCount": "3",
    }  # fmt: skip
    rfc3339(metadata["createTime"])

    done = wait_done(http, name)
    metadata = done["metadata"]
    assert metadata["state"] == "BATCH_STATE_SUCCEEDED" and "error" not in done
    assert rfc3339(metadata["endTime"]) >= rfc3339(metadata["createTime"])
    assert metadata["batchStats"]["successfulRequestCount"] == "3"
    assert metadata["batchStats"]["pendingRequestCount"] == "0"
    response = done["response"]
    assert response["@type"] == PREFIX + "GenerateContentBatchOutput" and metadata["output"] == response
    inlined = response["inlinedResponses"]["inlinedResponses"]
    # Shuffling is on by default, yet inline results keep the input order.
    assert [item["metadata"] for item in inlined] == [{"key": f"k{i}"} for i in range(3)]
    for text, item in zip(texts, inlined, strict=True):
        reply = model_reply([text], text)
        answer = item["response"]
        assert answer["candidates"] == [
            {"content": {"role": "model", "parts": [{"text": reply.content}]}, "finishReason": "STOP", "index": 0}
        ]
        usage = answer["usageMetadata"]
        assert (usage["promptTokenCount"], usage["candidatesTokenCount"]) == (
            reply.prompt_tokens,
            reply.completion_tokens,
        )
        assert usage["totalTokenCount"] == reply.prompt_tokens + reply.completion_tokens
        assert answer["modelVersion"] == MODEL and answer["responseId"]


def test_file_batch_and_file_api(http: httpx.Client) -> None:
    operation = create_file(http, [request(f"question {i}") for i in range(5)])
    assert operation["metadata"]["displayName"] == "from-file"
    input_name = operation["metadata"]["inputConfig"]["fileName"]
    resource = http.get(f"/v1beta/{input_name}").json()
    assert resource["name"] == input_name and resource["state"] == "ACTIVE" and resource["source"] == "UPLOADED"
    assert resource["mimeType"] == "application/jsonl" and resource["displayName"] == "input"
    assert int(resource["sizeBytes"]) > 0 and isinstance(resource["sizeBytes"], str)
    rfc3339(resource["expirationTime"])

    done = wait_done(http, operation["name"])
    output = done["response"]
    assert set(output) == {"@type", "responsesFile"} and done["metadata"]["output"] == output
    lines = [msgspec.json.decode(line) for line in download(http, output["responsesFile"])]
    by_key = {line["key"]: line for line in lines}
    assert sorted(by_key) == [f"k{i}" for i in range(5)]
    text = by_key["k3"]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert text == model_reply(["question 3"], "question 3").content
    assert http.get(f"/v1beta/{output['responsesFile']}").json()["source"] == "GENERATED"
    assert http.delete(f"/v1beta/{input_name}").json() == {}
    google_error(http.get(f"/v1beta/{input_name}"), 404, "NOT_FOUND")


def test_generation_config_and_request_errors(http: httpx.Client) -> None:
    system = {"parts": [{"text": "Be brief."}]}
    requests = [
        request("stop right here please", stopSequences=["here"]),
        request("a long question that needs many tokens", maxOutputTokens=2),
        request("twice", candidateCount=2),
        {"systemInstruction": system, **request("with a system prompt")},
        {"systemInstruction": system},
        request("x", maxOutputTokens=0),
    ]
    done = wait_done(http, create_inline(http, requests).json()["name"])
    items = done["response"]["inlinedResponses"]["inlinedResponses"]
    stop, capped, twice, with_system = (item["response"] for item in items[:4])
    assert stop["candidates"][0]["content"]["parts"][0]["text"] == "Echo: stop right "
    assert stop["candidates"][0]["finishReason"] == "STOP"
    assert capped["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert capped["usageMetadata"]["candidatesTokenCount"] == 2
    assert len(twice["candidates"]) == 2
    assert twice["usageMetadata"]["candidatesTokenCount"] == 2 * model_reply(["twice"], "twice").completion_tokens
    expected = model_reply(["Be brief.", "with a system prompt"], "with a system prompt")
    assert with_system["usageMetadata"]["promptTokenCount"] == expected.prompt_tokens
    for item in items[4:]:
        assert set(item) == {"metadata", "error"} and item["error"]["code"] == 3 and item["error"]["message"]
    assert done["metadata"]["batchStats"]["failedRequestCount"] == "2"


def test_list_get_cancel_delete(cluster: SimulatorCluster, http: httpx.Client) -> None:
    names = [create_inline(http, [request(f"q{i}")]).json()["name"] for i in range(3)]
    first = http.get("/v1beta/batches", params={"pageSize": 2}).json()
    assert [o["name"] for o in first["operations"]] == names[::-1][:2]
    second = http.get("/v1beta/batches", params={"pageSize": 2, "pageToken": first["nextPageToken"]}).json()
    assert [o["name"] for o in second["operations"]] == [names[0]] and "nextPageToken" not in second
    google_error(http.get("/v1beta/batches/nope"), 404, "NOT_FOUND")

    cluster.set_faults("gem", stall=True)
    stalled = create_inline(http, [request("never runs")]).json()["name"]
    time.sleep(0.1)
    assert http.get(f"/v1beta/{stalled}").json()["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert http.post(f"/v1beta/{stalled}:cancel").json() == {}
    done = wait_done(http, stalled)
    assert done["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert done["error"]["code"] == 1 and "response" not in done
    google_error(http.post(f"/v1beta/{stalled}:cancel"), 400, "FAILED_PRECONDITION")
    assert http.delete(f"/v1beta/{stalled}").json() == {}
    google_error(http.get(f"/v1beta/{stalled}"), 404, "NOT_FOUND")
    assert http.post(f"/v1beta/{names[0]}:delete").json() == {}
    google_error(http.get(f"/v1beta/{names[0]}"), 404, "NOT_FOUND")


def test_create_and_upload_errors(http: httpx.Client) -> None:
    google_error(create_inline(http, [request("x")], model="gemini-0"), 404, "NOT_FOUND")
    url = f"/v1beta/models/{MODEL}:batchGenerateContent"
    both = {"batch": {"input_config": {"requests": {"requests": [{"request": request("x")}]}, "file_name": "files/x"}}}
    google_error(http.post(url, json=both), 400, "INVALID_ARGUMENT")
    google_error(http.post(url, json={"batch": {"input_config": {"file_name": "files/missing"}}}), 404, "NOT_FOUND")
    google_error(http.post(url, json={"batch": {}}), 400, "INVALID_ARGUMENT")
    google_error(http.post(url, content=b"not json"), 400, "INVALID_ARGUMENT")
    huge = {"batch": {"input_config": {"requests": {"requests": [{"request": request("x" * (21 * 1024**2))}]}}}}
    google_error(http.post(url, json=huge), 400, "INVALID_ARGUMENT")

    google_error(http.post("/upload/v1beta/files", json={}), 400, "INVALID_ARGUMENT")
    google_error(http.post("/upload/v1beta/files", params={"upload_id": "nope"}, content=b"x"), 404, "NOT_FOUND")
    start = http.post(
        "/upload/v1beta/files",
        headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Length": "10"},
    )  # fmt: skip
    short = http.post(
        start.headers["x-goog-upload-url"], headers={"X-Goog-Upload-Command": "upload, finalize"}, content=b"abc"
    )
    google_error(short, 400, "INVALID_ARGUMENT")
    name = upload(http, b"{}\n")
    google_error(http.get(f"/download/v1beta/{name}:download"), 400, "INVALID_ARGUMENT")


def test_auth_and_models(cluster: SimulatorCluster, http: httpx.Client) -> None:
    anonymous = loopback.get(f"{cluster.base_url('gem')}/v1beta/models", timeout=10)
    google_error(anonymous, 401, "UNAUTHENTICATED")
    models = http.get("/v1beta/models", params={"pageSize": 1}).json()
    assert models["models"][0]["name"] == f"models/{MODEL}" and models["nextPageToken"]
    assert "batchGenerateContent" in models["models"][0]["supportedGenerationMethods"]


# --------------------------------------------------------------------------- faults


def test_outages_latency_and_call_errors(cluster: SimulatorCluster, http: httpx.Client) -> None:
    cluster.set_faults("gem", down="503")
    google_error(http.get("/v1beta/batches"), 503, "UNAVAILABLE")
    cluster.set_faults("gem", down="refuse")
    with pytest.raises(httpx.ConnectError):
        http.get("/v1beta/batches")
    cluster.set_faults("gem", down="off", latency_s=0.3)
    started = time.monotonic()
    assert http.get("/v1beta/batches").status_code == 200
    assert time.monotonic() - started >= 0.3
    cluster.set_faults("gem", latency_s=0, rate_limit_next=1, retry_after_s=7)
    limited = http.get("/v1beta/batches")
    error = google_error(limited, 429, "RESOURCE_EXHAUSTED")
    assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    assert "retry-after" not in limited.headers
    assert http.get("/v1beta/batches").status_code == 200
    cluster.set_faults("gem", error_5xx_rate=1.0)
    google_error(http.get("/v1beta/batches"), 500, "INTERNAL")


def test_fail_fraction_gives_per_request_errors(cluster: SimulatorCluster, http: httpx.Client) -> None:
    cluster.set_faults("gem", fail_fraction=0.5)
    requests = [request(f"q{i}") for i in range(20)]
    failing = {f"k{i}" for i in range(20) if hash_fraction(f"k{i}") < 0.5}
    assert 0 < len(failing) < 20
    inline = wait_done(http, create_inline(http, requests).json()["name"])
    items = inline["response"]["inlinedResponses"]["inlinedResponses"]
    assert {item["metadata"]["key"] for item in items if "error" in item} == failing
    assert all(item["error"]["code"] == 13 for item in items if "error" in item)
    assert inline["metadata"]["batchStats"]["failedRequestCount"] == str(len(failing))
    from_file = wait_done(http, create_file(http, requests)["name"])
    lines = [msgspec.json.decode(line) for line in download(http, from_file["response"]["responsesFile"])]
    assert {line["key"] for line in lines if "error" in line} == failing
    assert all(set(line) == {"key", "error"} and line["error"]["code"] == 13 for line in lines if "error" in line)


def test_shuffle_applies_to_the_file_variant_only(cluster: SimulatorCluster, http: httpx.Client) -> None:
    requests = [request(f"q{i}") for i in range(30)]
    keys = [f"k{i}" for i in range(30)]
    inline = wait_done(http, create_inline(http, requests).json()["name"])
    assert [i["metadata"]["key"] for i in inline["response"]["inlinedResponses"]["inlinedResponses"]] == keys
    shuffled = wait_done(http, create_file(http, requests)["name"])["response"]["responsesFile"]
    order = [msgspec.json.decode(line)["key"] for line in download(http, shuffled)]
    assert sorted(order) == sorted(keys) and order != keys
    cluster.set_faults("gem", shuffle_output=False)
    ordered = wait_done(http, create_file(http, requests)["name"])["response"]["responsesFile"]
    assert [msgspec.json.decode(line)["key"] for line in download(http, ordered)] == keys


def test_expire_leaves_no_results(cluster: SimulatorCluster, http: httpx.Client) -> None:
    cluster.set_faults("gem", expire=True)
    for operation in (
        create_inline(http, [request("a"), request("b")]).json(),
        create_file(http, [request("c"), request("d")]),
    ):
        done = wait_done(http, operation["name"])
        assert done["metadata"]["state"] == "BATCH_STATE_EXPIRED" and done["error"]["code"] == 4
        assert "response" not in done and "output" not in done["metadata"]


def test_malformed_line_in_the_file_variant(cluster: SimulatorCluster, http: httpx.Client) -> None:
    cluster.set_faults("gem", malformed_output_line=True, shuffle_output=False)
    done = wait_done(http, create_file(http, [request(f"q{i}") for i in range(4)])["name"])
    first, *rest = download(http, done["response"]["responsesFile"])
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(first)
    assert [msgspec.json.decode(line)["key"] for line in rest] == ["k1", "k2", "k3"]


def test_stall_keeps_the_batch_running(cluster: SimulatorCluster, http: httpx.Client) -> None:
    cluster.set_faults("gem", stall=True)
    name = create_inline(http, [request("a")]).json()["name"]
    time.sleep(0.3)
    operation = http.get(f"/v1beta/{name}").json()
    assert operation["done"] is False and operation["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert operation["metadata"]["batchStats"]["pendingRequestCount"] == "1"
    cluster.set_faults("gem", stall=False)
    assert wait_done(http, name)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"


# --------------------------------------------------------------------------- embeddings batches


def test_inline_embeddings_batch_succeeds_with_the_openai_emulators_vectors(http: httpx.Client) -> None:
    texts = [("first text",), ("a longer second text to embed",), ("split ", "in two parts")]
    operation = create_embed_inline(http, [embed_request(*t, taskType="RETRIEVAL_DOCUMENT") for t in texts])
    metadata = operation["metadata"]
    assert metadata["@type"] == PREFIX + "EmbedContentBatch" and metadata["model"] == f"models/{EMBED_MODEL}"
    assert metadata["displayName"] == "vectors" and metadata["state"] == "BATCH_STATE_PENDING"
    assert metadata["batchStats"]["requestCount"] == "3" and operation["done"] is False

    done = wait_done(http, operation["name"])
    response = done["response"]
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED" and "error" not in done
    assert done["metadata"]["batchStats"]["successfulRequestCount"] == "3"
    assert response["@type"] == PREFIX + "EmbedContentBatchOutput" and done["metadata"]["output"] == response
    # The service answers under inlinedResponses; the SDKs rename it inlinedEmbedContentResponses.
    assert set(response) == {"@type", "inlinedResponses"}
    items = response["inlinedResponses"]["inlinedResponses"]
    assert [item["metadata"] for item in items] == [{"key": f"k{i}"} for i in range(3)]
    for parts, item in zip(texts, items, strict=True):
        vector, tokens = openai_embedding("".join(parts))
        assert item["response"] == {"embedding": {"values": vector}, "tokenCount": tokens}
        assert len(vector) == 8


def test_file_embeddings_batch_writes_key_response_lines(http: httpx.Client) -> None:
    texts = [f"document number {i}" for i in range(5)]
    operation = create_file(http, [embed_request(t) for t in texts], method=EMBED)
    assert operation["metadata"]["@type"] == PREFIX + "EmbedContentBatch"
    assert operation["metadata"]["inputConfig"]["fileName"].startswith("files/")
    done = wait_done(http, operation["name"])
    output = done["response"]
    assert output["@type"] == PREFIX + "EmbedContentBatchOutput" and set(output) == {"@type", "responsesFile"}
    lines = [msgspec.json.decode(line) for line in download(http, output["responsesFile"])]
    assert all(set(line) == {"key", "response"} for line in lines)
    by_key = {line["key"]: line["response"] for line in lines}
    assert sorted(by_key) == [f"k{i}" for i in range(5)]
    for i, text in enumerate(texts):
        expected = {"embedding": {"values": embedding_vector(text)}, "tokenCount": text_tokens(text)}
        assert by_key[f"k{i}"] == expected


def test_embeddings_output_dimensionality_is_honoured(http: httpx.Client) -> None:
    requests = [
        embed_request("short", outputDimensionality=3),
        embed_request("wide", outputDimensionality=300),
        embed_request("snake", output_dimensionality=16),
        embed_request("default"),
    ]
    done = wait_done(http, create_embed_inline(http, requests)["name"])
    items = done["response"]["inlinedResponses"]["inlinedResponses"]
    values = [item["response"]["embedding"]["values"] for item in items]
    assert [len(v) for v in values] == [3, 300, 16, 8]
    assert values == [embedding_vector(t, n) for t, n in (("short", 3), ("wide", 300), ("snake", 16), ("default", 8))]


def test_bad_embed_requests_get_error_items_while_the_rest_succeed(http: httpx.Client) -> None:
    bad: list[dict[str, Any]] = [
        {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}},
        {"title": "no content at all"},
        embed_request("x", outputDimensionality=0),
        embed_request("x", outputDimensionality=-4),
        embed_request("x", outputDimensionality=1_000_000),
        embed_request("x", outputDimensionality=True),
        embed_request("x", taskType="NOT_A_TASK"),
        embed_request("x", model="models/gemini-2.5-pro"),
    ]
    good = [embed_request("fine"), embed_request("also fine", model=f"models/{EMBED_MODEL}")]
    done = wait_done(http, create_embed_inline(http, [good[0], *bad, good[1]])["name"])
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    stats = done["metadata"]["batchStats"]
    assert (stats["successfulRequestCount"], stats["failedRequestCount"]) == ("2", str(len(bad)))
    first, *errors, last = done["response"]["inlinedResponses"]["inlinedResponses"]
    for item in errors:
        assert set(item) == {"metadata", "error"} and item["error"]["code"] == 3 and item["error"]["message"]
    assert first["response"]["tokenCount"] == text_tokens("fine")
    assert last["response"]["embedding"]["values"] == embedding_vector("also fine")


def test_fail_fraction_gives_embed_error_items(cluster: SimulatorCluster, http: httpx.Client) -> None:
    cluster.set_faults("gem", fail_fraction=0.5)
    requests = [embed_request(f"text {i}") for i in range(20)]
    failing = {f"k{i}" for i in range(20) if hash_fraction(f"k{i}") < 0.5}
    assert 0 < len(failing) < 20
    inline = wait_done(http, create_embed_inline(http, requests)["name"])
    items = inline["response"]["inlinedResponses"]["inlinedResponses"]
    assert {item["metadata"]["key"] for item in items if "error" in item} == failing
    assert all(item["error"]["code"] == 13 for item in items if "error" in item)
    assert inline["metadata"]["batchStats"]["failedRequestCount"] == str(len(failing))
    from_file = wait_done(http, create_file(http, requests, method=EMBED)["name"])
    lines = [msgspec.json.decode(line) for line in download(http, from_file["response"]["responsesFile"])]
    assert {line["key"] for line in lines if "error" in line} == failing
    assert all(set(line) == {"key", "error"} and line["error"]["code"] == 13 for line in lines if "error" in line)


def test_embeddings_batches_expire_cancel_and_corrupt_like_generate_batches(
    cluster: SimulatorCluster, http: httpx.Client
) -> None:
    cluster.set_faults("gem", expire=True)
    expired = wait_done(http, create_embed_inline(http, [embed_request("a"), embed_request("b")])["name"])
    assert expired["metadata"]["state"] == "BATCH_STATE_EXPIRED" and expired["error"]["code"] == 4
    assert "response" not in expired and "output" not in expired["metadata"]
    cluster.set_faults("gem", expire=False, stall=True)
    stalled = create_embed_inline(http, [embed_request("never embedded")])["name"]
    assert http.post(f"/v1beta/{stalled}:cancel").json() == {}
    cancelled = wait_done(http, stalled)
    assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED" and cancelled["error"]["code"] == 1
    cluster.set_faults("gem", stall=False, malformed_output_line=True, shuffle_output=False)
    done = wait_done(http, create_file(http, [embed_request(f"t{i}") for i in range(3)], method=EMBED)["name"])
    first, *rest = download(http, done["response"]["responsesFile"])
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(first)
    assert [msgspec.json.decode(line)["key"] for line in rest] == ["k1", "k2"]


def test_embeddings_job_endpoint_and_invoice(cluster: SimulatorCluster, http: httpx.Client) -> None:
    texts = ["one", "a somewhat longer text"]
    embed = wait_done(http, create_embed_inline(http, [embed_request(t) for t in texts])["name"])
    generate = wait_done(http, create_inline(http, [request("q")]).json()["name"])
    jobs = cluster.state("gem").jobs
    assert jobs[embed["name"].removeprefix("batches/")].endpoint == EMBED
    assert jobs[generate["name"].removeprefix("batches/")].endpoint == GENERATE
    invoice = loopback.get(f"{cluster.control_url}/providers/gem/invoice", timeout=10).json()
    billed = {batch["id"]: batch for batch in invoice["batches"]}[embed["name"].removeprefix("batches/")]
    assert billed["requests_billed"] == 2 and billed["output_tokens"] == 0
    assert billed["input_tokens"] == sum(text_tokens(t) for t in texts)


def test_models_list_names_async_batch_embed_content(http: httpx.Client) -> None:
    models = http.get("/v1beta/models").json()["models"]
    assert all(EMBED in model["supportedGenerationMethods"] for model in models)
    assert f"models/{EMBED_MODEL}" in [model["name"] for model in models]


def test_other_methods_stay_not_found(http: httpx.Client) -> None:
    batch = {"batch": {"inputConfig": {"requests": {"requests": [{"request": embed_request("x")}]}}}}
    for method in ("batchEmbedContents", "asyncBatchEmbedContents"):  # embedContent is served (synchronous)
        google_error(http.post(f"/v1beta/models/{EMBED_MODEL}:{method}", json=batch), 404, "NOT_FOUND")
    missing = google_error(
        http.post(f"/v1beta/models/{EMBED_MODEL}:{EMBED}", json={"batch": {}}), 400, "INVALID_ARGUMENT"
    )
    assert "AsyncBatchEmbedContentRequest" in missing["message"]
