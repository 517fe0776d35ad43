"""Pure transforms of Bedrock batch inference: statuses, records named after shard lines, result records."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from gateway.providers.base import ProviderBatchState
from gateway.providers.bedrock_wire import (
    JOB_STATUS,
    apportion,
    job_id_of,
    manifest_tokens,
    parse_job,
    record_id,
    result_envelope,
    timeout_hours,
    translate_shard,
)
from gateway.translate import MalformedResult, estimated_tokens
from gateway.translate.bedrock import CHAT, EMBEDDINGS, family_of

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/ab12cd34ef56"


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("Submitted", ProviderBatchState.QUEUED),
        ("Scheduled", ProviderBatchState.QUEUED),
        ("InProgress", ProviderBatchState.RUNNING),
        ("Stopping", ProviderBatchState.CANCELLING),
        ("Completed", ProviderBatchState.COMPLETED),
        ("PartiallyCompleted", ProviderBatchState.EXPIRED),
        ("Expired", ProviderBatchState.EXPIRED),
        ("Stopped", ProviderBatchState.CANCELLED),
    ],
)
def test_statuses_map_to_gateway_states(status: str, state: ProviderBatchState) -> None:
    result, known = parse_job({"status": status})
    assert known and result.state is state and result.error is None


def test_a_failed_job_carries_its_message_and_counts_are_read() -> None:
    job = {"status": "Failed", "message": "too few records", "totalRecordCount": 9, "errorRecordCount": 9}
    result, known = parse_job(job)
    assert known and result.state is ProviderBatchState.FAILED and result.error == "too few records"
    assert (result.total, result.completed, result.failed) == (9, 0, 9)
    unknown, known = parse_job({"status": "Paused"})
    assert not known and unknown.state is ProviderBatchState.RUNNING
    assert set(JOB_STATUS) >= {"Validating", "Failed"}


def test_ids_names_and_windows() -> None:
    assert record_id(7) == "R0000000007" and len(record_id(1)) == 11
    assert job_id_of(ARN) == "ab12cd34ef56"
    assert (timeout_hours(3600), timeout_hours(72 * 3600), timeout_hours(30 * 24 * 3600)) == (24, 72, 168)


def shard(tmp_path: Path) -> Path:
    lines = [
        {"custom_id": "first question", "body": {"model": CLAUDE, "messages": [{"role": "user", "content": "a"}]}},
        {"custom_id": "refused", "body": {"model": CLAUDE, "messages": [], "logprobs": True}},
        {"custom_id": "q/3", "body": {"model": CLAUDE, "messages": [{"role": "user", "content": "c"}]}},
    ]
    path = tmp_path / "shard.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_records_are_named_after_their_line_and_refused_lines_are_kept_apart(tmp_path: Path) -> None:
    family = family_of(CLAUDE)
    assert family is not None
    dest = tmp_path / "records.jsonl"
    index = translate_shard(shard(tmp_path), CHAT, family, 100, dest)
    records = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [r["recordId"] for r in records] == ["R0000000001", "R0000000003"]
    assert records[0]["modelInput"]["anthropic_version"] == "bedrock-2023-05-31"
    assert index.custom_ids == {"R0000000001": "first question", "R0000000002": "refused", "R0000000003": "q/3"}
    assert [(rid, custom_id) for rid, custom_id, _ in index.rejected] == [("R0000000002", "refused")]
    assert index.sent == 2 and index.size == dest.stat().st_size


def test_result_records_join_on_record_id_whatever_their_order(tmp_path: Path) -> None:
    family = family_of(CLAUDE)
    assert family is not None
    index = translate_shard(shard(tmp_path), CHAT, family, 100)
    message = {
        "id": "msg_bdrk_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "C"}], "usage": {"input_tokens": 5, "output_tokens": 1},
    }  # fmt: skip
    ok = msgspec.json.encode({"recordId": "R0000000003", "modelInput": {}, "modelOutput": message})
    failed = msgspec.json.encode({"recordId": "R0000000001", "error": {"errorCode": 400, "errorMessage": "bad"}})
    first = result_envelope(ok, index=index, family=family, model=CLAUDE, job_id="j", created=1)
    second = result_envelope(failed, index=index, family=family, model=CLAUDE, job_id="j", created=1)
    assert first["custom_id"] == "q/3" and first["response"]["body"]["choices"][0]["message"]["content"] == "C"
    assert second["custom_id"] == "first question" and second["response"]["status_code"] == 400
    assert second["response"]["body"]["error"]["message"] == "bad"
    for raw in (b"{not json", msgspec.json.encode({"recordId": "R9999999999", "modelOutput": message})):
        with pytest.raises(MalformedResult):
            result_envelope(raw, index=index, family=family, model=CLAUDE, job_id="j", created=1)


def test_manifest_token_counts() -> None:
    assert manifest_tokens(b'{"inputTokenCount": 10, "outputTokenCount": 4, "totalRecordCount": 2}') == (10, 4)
    assert manifest_tokens(b'{"totalRecordCount": 2}') is None and manifest_tokens(b"nope") is None


@pytest.mark.parametrize(
    ("total", "weights"),
    [(10, [1, 1, 1]), (1_000, [3, 5, 2, 0]), (7, [0, 0]), (0, [4, 5]), (12_345, [17, 1, 250, 9, 9, 9]), (3, [1] * 10)],
)
def test_a_total_is_shared_by_weight_in_whole_tokens_that_sum_to_it(total: int, weights: list[int]) -> None:
    shares = apportion(total, weights)
    assert sum(shares) == total and len(shares) == len(weights) and min(shares) >= 0
    whole = sum(weights) or len(weights)
    for share, weight in zip(shares, weights, strict=True):
        exact = total * (weight if sum(weights) else 1) / whole
        assert abs(share - exact) < 1  # never a token more or less than its exact share, rounded


def test_a_cohere_shard_index_keeps_the_bytes_of_each_records_texts(tmp_path: Path) -> None:
    family = family_of("cohere.embed-v4:0")
    assert family is not None
    shard = tmp_path / "shard.jsonl"
    lines = [
        {"custom_id": "a", "body": {"input": "héllo"}},
        {"custom_id": "b", "body": {"input": ["one", "three"]}},
        {"custom_id": "c", "body": {"input": "x", "input_type": "image"}},
    ]
    shard.write_text("".join(json.dumps({**line, "method": "POST", "url": EMBEDDINGS}) + "\n" for line in lines))
    index = translate_shard(shard, EMBEDDINGS, family, 100)
    assert index.text_bytes == {record_id(1): 6, record_id(2): 8} and index.sent == 2
    assert [rid for rid, _, _ in index.rejected] == [record_id(3)]
    assert estimated_tokens(6) == 2 and estimated_tokens(8) == 2 and estimated_tokens(0) == 0
