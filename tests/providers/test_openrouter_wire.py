"""OpenRouter's wire format: the create body's field order, and what each answer of an ended batch was billed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import pytest

from gateway.providers.openrouter_wire import (
    BatchResults,
    batch_cost,
    billed_shares,
    result_lines,
    results_decoder,
    unsent_requests,
    write_create_body,
)
from tests.providers.support import CHAT, chat_line


def test_create_body_names_endpoint_and_model_before_the_requests_and_leaves_out_bodies_that_are_not_objects(
    tmp_path: Path,
) -> None:
    lines = [chat_line("a", "one", "m"), {"custom_id": "b", "body": "not an object"}, chat_line("c", "three", "m")]
    shard = tmp_path / "shard.jsonl"
    shard.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
    with tempfile.NamedTemporaryFile(dir=tmp_path) as out:
        body = write_create_body(shard, out, CHAT, "m", {"only": ["x"], "allow_fallbacks": False})
        raw = Path(out.name).read_bytes()
    assert body.count == 2 and body.size == len(raw)
    decoded = msgspec.json.decode(raw)
    assert list(decoded) == ["endpoint", "model", "completion_window", "provider", "requests"]
    assert decoded["completion_window"] == "24h"
    assert [request["custom_id"] for request in decoded["requests"]] == ["a", "c"]
    assert decoded["requests"][0]["body"] == lines[0]["body"]
    assert [custom_id for custom_id, _ in unsent_requests(shard)] == ["b"]


def test_inline_images_files_and_audio_are_left_out_with_a_reason_and_url_images_go(tmp_path: Path) -> None:
    def with_part(custom_id: str, part: dict[str, object]) -> dict[str, object]:
        line = chat_line(custom_id, "look", "m")
        line["body"]["messages"] = [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]
        return line

    lines = [
        with_part("url", {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}),
        with_part("data", {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}),
        with_part("file", {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}),
        with_part("audio", {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
        chat_line("plain", "text only", "m"),
    ]  # fmt: skip
    shard = tmp_path / "shard.jsonl"
    shard.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
    with tempfile.NamedTemporaryFile(dir=tmp_path) as out:
        body = write_create_body(shard, out, CHAT, "m")
        sent = [request["custom_id"] for request in msgspec.json.decode(Path(out.name).read_bytes())["requests"]]
    assert body.count == 2 and sent == ["url", "plain"]
    refused = dict(unsent_requests(shard))
    assert sorted(refused) == ["audio", "data", "file"]
    assert all(why.param == "messages" and "not inline (base64)" in why.message for why in refused.values())


def test_the_batch_cost_is_shared_by_each_answers_own_cost_else_by_tokens_else_evenly() -> None:
    assert billed_shares(0.01, [(100, 0.003), (50, 0.007)]) == pytest.approx([0.003, 0.007])
    assert billed_shares(0.02, [(100, 0.003), (50, 0.007)]) == pytest.approx([0.006, 0.014])  # fees: still the total
    assert billed_shares(0.03, [(100, None), (200, 0.001)]) == pytest.approx([0.01, 0.02])  # one lacks a cost: tokens
    assert billed_shares(0.04, [(0, None), (0, None)]) == pytest.approx([0.02, 0.02])
    assert billed_shares(None, [(10, 0.001), (20, 0.002)]) == pytest.approx([0.001, 0.002])
    assert billed_shares(None, [(10, 0.001), (20, None)]) is None  # nothing says what all of them cost
    assert billed_shares(0.5, []) == []


def test_result_lines_carry_their_share_of_usage_cost_and_failed_requests_carry_none() -> None:
    def answer(custom_id: str, prompt: int, completion: int, cost: float) -> dict[str, object]:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "cost": cost}
        body = {"id": f"gen-batch-{custom_id}", "object": "chat.completion", "usage": usage}
        return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": {"status_code": 200, "body": body}}

    results = [
        answer("a", 10, 5, 0.0004),
        {"id": "batch_req_b", "custom_id": "b", "response": None, "error": {"message": "timed out", "type": "timeout"}},
        {"custom_id": 7},  # unusable: skipped, never billed
        answer("c", 30, 20, 0.0006),
    ]
    raw = msgspec.json.encode({"status": "completed", "results": results, "usage": {"cost": 0.001}})
    batch = results_decoder.decode(raw)
    assert isinstance(batch, BatchResults)
    found = result_lines(batch, "batch_1")
    assert [line["custom_id"] for line in found.lines] == ["a", "b", "c"]
    assert [line.get("billed_usd") for line in found.lines] == pytest.approx([0.0004, None, 0.0006])
    assert found.lines[1]["error"] == {"code": "timeout", "message": "timed out"}  # the retry rule reads the code
    assert [position for position, _ in found.skipped] == [3]


def test_the_batch_cost_is_usage_cost_plus_the_upstream_charge_on_byok_routes() -> None:
    assert batch_cost({"cost": 0.25, "is_byok": False}) == 0.25
    assert batch_cost({"cost": "0.25"}) == 0.25  # a number written as a string is still the charge
    byok = {"cost": 0.01, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.5}}
    assert batch_cost(byok) == pytest.approx(0.51)  # OpenRouter's fee plus what the upstream provider billed
    assert batch_cost({"cost": None}) is None and batch_cost(None) is None and batch_cost({"cost": "n/a"}) is None


def test_a_repeated_custom_id_is_used_once_and_a_cost_nothing_answered_is_reported() -> None:
    ok = {"status_code": 200, "body": {"usage": {"prompt_tokens": 5, "completion_tokens": 5, "cost": 0.002}}}
    results = [{"custom_id": "a", "response": ok}, {"custom_id": "a", "response": ok}]
    batch = results_decoder.decode(msgspec.json.encode({"results": results, "usage": {"cost": 0.002}}))
    found = result_lines(batch, "batch_1")
    assert [line["custom_id"] for line in found.lines] == ["a"] and found.lines[0]["billed_usd"] == 0.002
    assert [position for position, _ in found.skipped] == [2]
    failed = [{"custom_id": "b", "response": None, "error": {"message": "no", "type": "server_error"}}]
    batch = results_decoder.decode(msgspec.json.encode({"results": failed, "usage": {"cost": 0.003}}))
    assert result_lines(batch, "batch_1").unassigned_usd == 0.003
