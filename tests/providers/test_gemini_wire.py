"""Pure transforms of the Gemini batch wire format: state table, Operation reading, retry hints, embeddings
shards and their results."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import msgspec
import pytest

from gateway.providers.base import ProviderBatchState
from gateway.providers.gemini_wire import (
    EmbeddingAsk,
    inlined_responses,
    key_refused,
    map_batch_state,
    operation_output,
    parse_operation,
    result_envelope,
    retry_delay,
    translate_shard,
)


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("BATCH_STATE_PENDING", ProviderBatchState.QUEUED), ("JOB_STATE_PENDING", ProviderBatchState.QUEUED),
        ("JOB_STATE_QUEUED", ProviderBatchState.QUEUED), ("JOB_STATE_PAUSED", ProviderBatchState.QUEUED),
        ("BATCH_STATE_RUNNING", ProviderBatchState.RUNNING), ("JOB_STATE_RUNNING", ProviderBatchState.RUNNING),
        ("JOB_STATE_UPDATING", ProviderBatchState.RUNNING), ("JOB_STATE_CANCELLING", ProviderBatchState.CANCELLING),
        ("BATCH_STATE_SUCCEEDED", ProviderBatchState.COMPLETED), ("JOB_STATE_SUCCEEDED", ProviderBatchState.COMPLETED),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", ProviderBatchState.COMPLETED),
        ("BATCH_STATE_FAILED", ProviderBatchState.FAILED), ("JOB_STATE_FAILED", ProviderBatchState.FAILED),
        ("BATCH_STATE_CANCELLED", ProviderBatchState.CANCELLED), ("JOB_STATE_CANCELLED", ProviderBatchState.CANCELLED),
        ("BATCH_STATE_EXPIRED", ProviderBatchState.EXPIRED), ("JOB_STATE_EXPIRED", ProviderBatchState.EXPIRED),
        ("batch_state_running", ProviderBatchState.RUNNING), ("BATCH_STATE_UNSPECIFIED", None), (None, None),
    ],
)  # fmt: skip
def test_state_table(raw: str | None, state: ProviderBatchState | None) -> None:
    assert map_batch_state(raw) is state


def test_parse_operation_falls_back_on_done() -> None:
    failed = parse_operation({"done": True, "error": {"code": 3, "message": "bad input file"}, "metadata": {}})
    assert failed.state is ProviderBatchState.FAILED and failed.error == "bad input file"
    assert parse_operation({"done": True, "response": {}}).state is ProviderBatchState.COMPLETED
    assert parse_operation({"metadata": {"state": "BATCH_STATE_UNSPECIFIED"}}).state is ProviderBatchState.RUNNING
    stats = {"requestCount": "10", "successfulRequestCount": "6", "failedRequestCount": 1, "pendingRequestCount": "3"}
    running = parse_operation({"metadata": {"state": "BATCH_STATE_RUNNING", "batchStats": stats}})
    assert (running.total, running.completed, running.failed, running.error) == (10, 6, 1, None)


def test_output_prefers_response_then_metadata() -> None:
    response = {"responsesFile": "files/a"}
    mirrored = {"responsesFile": "files/b"}
    assert operation_output({"response": response, "metadata": {"output": mirrored}}) == response
    assert operation_output({"response": {"@type": "x"}, "metadata": {"output": mirrored}}) == mirrored
    assert operation_output({"done": True}) == {}
    assert inlined_responses({"inlinedResponses": {"inlinedResponses": [{"a": 1}, 2]}}) == [{"a": 1}]
    assert inlined_responses({"inlinedResponses": [{"b": 1}]}) == [{"b": 1}]
    assert inlined_responses(mirrored) is None


def test_retry_delay_from_retry_info() -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
               {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27.5s"}]  # fmt: skip
    assert retry_delay(msgspec.json.encode({"error": {"code": 429, "details": details}})) == 27.5
    assert retry_delay(b'{"error": {"code": 429}}') is None
    assert retry_delay(b"not json") is None


def test_key_refused_reads_the_error_info_reason() -> None:
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    invalid = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                         "status": "INVALID_ARGUMENT", "details": [info]}}  # fmt: skip
    assert key_refused(msgspec.json.encode(invalid))
    other = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [{**info, "reason": "BAD_REQUEST"}]}}
    assert not key_refused(msgspec.json.encode(other))
    assert not key_refused(b'{"error": {"code": 400}}') and not key_refused(b"not json")


def test_an_embeddings_shard_translates_by_each_lines_url_and_notes_who_wants_base64(tmp_path: Path) -> None:
    def line(custom_id: str, url: str, body: dict[str, object]) -> bytes:
        return msgspec.json.encode({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + b"\n"

    shard = tmp_path / "shard.jsonl"
    shard.write_bytes(
        line("e1", "/v1/embeddings", {"model": "m", "input": "one", "encoding_format": "base64"})
        + line("e2", "/v1/embeddings", {"model": "m", "input": ["two"], "dimensions": 4})
        + line("e3", "/v1/embeddings", {"model": "m", "input": ["a", "b"]})
    )
    translated = translate_shard(shard, tmp_path / "requests.jsonl")
    assert translated.sent == ["e1", "e2"] and [cid for cid, _ in translated.rejected] == ["e3"]
    assert translated.embeddings == {"e1": EmbeddingAsk(1, base64=True), "e2": EmbeddingAsk(1)}  # 3 bytes: 1 token
    requests = [msgspec.json.decode(raw) for raw in (tmp_path / "requests.jsonl").read_bytes().splitlines()]
    assert requests[1] == {"key": "e2", "request": {"content": {"parts": [{"text": "two"}]}, "outputDimensionality": 4}}


def test_an_embedding_result_becomes_an_openai_line_in_float_or_base64_and_an_unusable_one_an_error() -> None:
    result = {"response": {"embedding": {"values": [0.5, -1.0]}, "tokenCount": 4}, "metadata": {"key": "e1"}}
    envelope = result_envelope("e1", result, batch_id="batches/b", model="gemini-embedding-001", created=0)
    body = envelope["response"]["body"]
    assert envelope["response"]["status_code"] == 200 and envelope["error"] is None
    assert body["data"][0]["embedding"] == [0.5, -1.0] and body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    asks = {"e1": EmbeddingAsk(9, base64=True), "e2": EmbeddingAsk(7)}
    packed = result_envelope("e1", result, batch_id="batches/b", model="m", created=0, embeddings=asks)
    vector = packed["response"]["body"]["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(vector)) == (0.5, -1.0)
    unusable = result_envelope("e2", {"response": {"embedding": {"values": [1.0]}}}, batch_id="b", model="m", created=0)
    assert unusable["response"] is None and unusable["error"]["code"] == "invalid_provider_output"
    assert "tokenCount" in unusable["error"]["message"]
    # With the shard known: an answer without tokenCount is kept at the estimate, one without a vector is no
    # chat answer but an error.
    estimated = result_envelope(
        "e2", {"response": {"embedding": {"values": [1.0]}}}, batch_id="b", model="m", created=0, embeddings=asks
    )
    assert estimated["response"]["body"]["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    empty = result_envelope("e2", {"response": {"tokenCount": 3}}, batch_id="b", model="m", created=0, embeddings=asks)
    assert empty["response"] is None and empty["error"]["code"] == "invalid_provider_output"
