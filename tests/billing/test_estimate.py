"""Token estimates: bytes / 4 in, max_tokens (or the default) out, nothing out for embeddings."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.billing.estimate import BYTES_PER_TOKEN, DEFAULT_OUTPUT_TOKENS, cost_usd, estimate_body, estimate_file


def test_estimate_body() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}).encode()
    assert estimate_body(body, "/v1/chat/completions") == ("m", len(body) // BYTES_PER_TOKEN, 50)
    no_cap = json.dumps({"model": "m", "messages": []}).encode()
    assert estimate_body(no_cap, "/v1/chat/completions")[2] == DEFAULT_OUTPUT_TOKENS
    newer = json.dumps({"model": "m", "max_completion_tokens": 7, "max_tokens": 50}).encode()
    assert estimate_body(newer, "/v1/chat/completions")[2] == 7
    assert estimate_body(json.dumps({"model": "e", "input": "hi"}).encode(), "/v1/embeddings")[2] == 0


def test_estimate_file_groups_by_model_with_first_lines(tmp_path: Path) -> None:
    lines = [
        {"custom_id": f"r{i}", "body": {"model": "a" if i % 3 else "b", "max_tokens": 10}} for i in range(1, 10)
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    models = estimate_file(path, "/v1/chat/completions")
    assert {name: (m.requests, m.first_line, m.output_tokens) for name, m in models.items()} == {
        "a": (6, 1, 60),
        "b": (3, 3, 30),
    }


def test_cost() -> None:
    assert cost_usd(1_000_000, 2_000_000, (0.5, 1.5)) == 3.5
