"""Helpers shared by the API tests: request lines, uploads, creates, polling and the OpenAI error-shape check."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
from openai.types import Batch, FileObject

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
ONE_MIB = 1024 * 1024


def request(custom_id: str, model: str = MODEL, url: str = CHAT, content: str = "What is 2 + 2?") -> dict:
    """One chat request line as a dict."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 16},
    }


def jsonl(*lines: dict | bytes) -> bytes:
    """Lines (dicts are JSON-encoded, bytes kept) joined with newlines, with a final newline."""
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def good_file(count: int = 3, model: str = MODEL) -> bytes:
    return jsonl(*(request(f"req-{i}", model) for i in range(count)))


def upload(client: openai.OpenAI, content: bytes) -> FileObject:
    return client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch")


def create(client: openai.OpenAI, file_id: str, **kwargs: object) -> Batch:
    return client.batches.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="24h",
        **kwargs,  # type: ignore[arg-type]
    )


def wait_for(client: openai.OpenAI, batch_id: str, done: set[str], timeout: float = 30.0) -> Batch:
    """Poll a batch until its status is one of ``done``."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status!r} after {timeout}s")
        time.sleep(0.05)


def validated(client: openai.OpenAI, batch_id: str) -> Batch:
    """The batch once validation has finished with it."""
    deadline = time.monotonic() + 30
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status != "validating":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still validating"
        time.sleep(0.05)


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    """The response is an OpenAI error with exactly message/type/param/code; returns the error. On the
    Anthropic-format routes (``/v1/messages``), an Anthropic error of the same status (no code or param there)."""
    assert response.status_code == status, response.text
    body = response.json()
    if response.request.url.path.startswith("/v1/messages"):
        assert set(body) == {"type", "error", "request_id"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
        assert body["error"]["type"] == ("invalid_request_error" if status == 400 else body["error"]["type"])
        if code == "invalid_characters":
            assert "control character" in body["error"]["message"], body
        return dict(body["error"])
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return dict(error)
