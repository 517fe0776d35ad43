"""The OpenAI batch protocol (also spoken by Groq and Together): request bodies through the deterministic
model, and the driver that validates a batch's input file, runs its requests and writes its result files.

The HTTP routes live in :mod:`gateway.simulator.openai_routes` (Files and Batches) and
:mod:`gateway.simulator.openai_sync` (the synchronous endpoints).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from litestar import Router

from gateway.simulator.errors import ApiError, openai_error_body
from gateway.simulator.file_store import StoredFile
from gateway.simulator.jobs import ItemOutcome, Job, JobItem
from gateway.simulator.model import (
    POISON_NESTING,
    Reply,
    embedding_vector,
    model_reply,
    pack_floats,
    stable_id,
    text_tokens,
)
from gateway.simulator.openai_dialects import CHAT, DIALECTS
from gateway.simulator.state import DAY_S, EmulatorState

FILE_TTL_S = 30 * DAY_S
TTL_MIN_S, TTL_MAX_S = 3600, 30 * DAY_S
MAX_DIMENSIONS = 4096
MAX_VALIDATION_ERRORS = 100


def invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    """The 400 of an invalid request parameter."""
    return ApiError(400, message, param=param, code=code)


# --- request bodies through the deterministic model ----------------------------------------------------


def message_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The text of each chat message (text parts joined; other parts count as empty)."""
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(str(p.get("text", "")) for p in parts)
        texts.append(content if isinstance(content, str) else "")
    return texts


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise invalid(name, f"Invalid value for '{name}': expected an integer >= 1.")
    return value


def _served_model(body: Mapping[str, Any], models: Sequence[str]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "You must provide a model parameter.", "missing_required_parameter")
    if model not in models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        raise invalid("model", message, "model_not_found")
    return model


def simulate_chat(body: Mapping[str, Any]) -> Reply:
    """The emulated model's reply to a chat completion body (raises a 400 ``ApiError`` if invalid)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise invalid("messages", "'messages' must be a non-empty array of objects.")
    if body.get("stream"):
        raise invalid("stream", "Streaming is not supported in batch requests.")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise invalid("stop", "'stop' must be a string or an array of up to 4 strings.")
    cap = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    texts = message_texts(messages)
    users = [text for message, text in zip(messages, texts, strict=True) if message.get("role") == "user"]
    return model_reply(texts, users[-1] if users else texts[-1], cap, stops)


def chat_completion(body: Mapping[str, Any], models: Sequence[str], custom_id: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` body; its id derives from custom_id and the request body."""
    model = _served_model(body, models)
    reply = simulate_chat(body)
    n = _positive_int(body, "n") or 1
    completion = reply.completion_tokens * n
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None, "annotations": []}
    choice = {"message": message, "logprobs": None, "finish_reason": reply.finish_reason}
    return {
        "id": stable_id("chatcmpl-", custom_id, msgspec.json.encode(body, order="sorted").decode()),
        "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, **choice} for i in range(n)],
        "usage": {
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default", "system_fingerprint": "fp_emulated",
    }  # fmt: skip


def _ramble(body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """A chat.completion whose every choice runs on to ``tokens`` completion tokens."""
    choices = [
        {**choice, "message": {**choice["message"], "content": ("la " * tokens * 2)[: tokens * 4]}}
        for choice in body["choices"]
    ]
    completion = tokens * len(choices)
    usage = {
        **body["usage"],
        "completion_tokens": completion,
        "total_tokens": body["usage"]["prompt_tokens"] + completion,
    }
    return {**body, "choices": choices, "usage": usage}


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def embeddings(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """An embeddings list body: one deterministic vector per input (8 floats unless ``dimensions``)."""
    model = _served_model(body, models)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) or _is_tokens(raw) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) or _is_tokens(i) for i in inputs):
        raise invalid("input", "'input' must be a string, an array of strings or of token arrays.")
    dimensions = _positive_int(body, "dimensions") or 8
    if dimensions > MAX_DIMENSIONS:
        raise invalid("dimensions", f"'dimensions' must be at most {MAX_DIMENSIONS}.")
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        tokens += text_tokens(item) if isinstance(item, str) else len(item)
        vector = embedding_vector(item if isinstance(item, str) else ",".join(map(str, item)), dimensions)
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(pack_floats(vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _issue(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


DUPLICATE = (
    "The custom_id for this request is a duplicate of another request. "
    "The custom_id parameter must be unique for each request in a batch."
)


class OpenAIDriver:
    """Validation, execution and result files of OpenAI batches, in one of the protocol's dialects."""

    kind = "openai"
    answers_in_files = True

    def __init__(self, dialect: str = "openai") -> None:
        self.wire = DIALECTS[dialect]
        self.base_path = self.wire.base_path

    def route_handlers(self) -> list[Any]:
        from gateway.simulator.openai_routes import BatchesController, FilesController
        from gateway.simulator.openai_sync import SyncController

        return [Router(path=self.base_path, route_handlers=[FilesController, BatchesController, SyncController])]

    def error_body(self, err: ApiError) -> dict[str, Any]:
        kind = err.type or ("server_error" if err.status >= 500 else "invalid_request_error")
        return openai_error_body(err.message, kind, err.param, err.code)

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        if self.wire.key_header is not None:
            return headers.get(self.wire.key_header) == api_key
        return headers.get("authorization") == f"Bearer {api_key}"

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        if self.wire.key_header is not None:  # Azure's words
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                "key for an active subscription and use a correct regional API endpoint for your resource."
            )
            return ApiError(401, message, code="401")
        # OpenAI's own words: a masked fragment of the key sent, and where to find a valid one.
        sent = headers.get("authorization", "").removeprefix("Bearer ").strip()
        where = f"http://{headers.get('host', 'localhost')}/account/api-keys"
        if not sent:
            return ApiError(401, f"You didn't provide an API key. You can obtain an API key from {where}.")
        masked = f"{sent[:6]}{'*' * max(len(sent) - 10, 3)}{sent[-4:]}" if len(sent) > 10 else "*" * len(sent)
        message = f"Incorrect API key provided: {masked}. You can find your API key at {where}."
        return ApiError(401, message, code="invalid_api_key")

    def validate(self, state: EmulatorState, job: Job) -> None:
        stored = state.files.files.get(job.extra["input_file_id"])
        if stored is None:
            job.errors = [_issue("invalid_request", "The input file was deleted.", None, "input_file_id")]
            return
        seen: set[str] = set()
        count = 0
        with Path(stored.path).open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                count += 1
                if count > state.max_lines:
                    message = f"The batch input file has more than {state.max_lines} requests."
                    job.errors = [_issue("too_many_tasks", message, None)]
                    return
                issue = self._check_line(job, raw, number, seen)
                if issue and len(job.errors) < MAX_VALIDATION_ERRORS:
                    job.errors.append(issue)
        if not count:
            job.errors.append(_issue("empty_file", "The batch input file is empty.", None))

    def _check_line(self, job: Job, raw: bytes, number: int, seen: set[str]) -> dict[str, Any] | None:
        try:
            line = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            line = None
        if not isinstance(line, dict):
            return _issue("invalid_json_line", "This line is not parseable as valid JSON.", number)
        custom_id, body, url = line.get("custom_id"), line.get("body"), line.get("url")
        if not isinstance(custom_id, str) or not custom_id:
            return _issue("invalid_request", "Each line needs a string 'custom_id'.", number, "custom_id")
        longest = self.wire.max_custom_id
        if longest is not None and len(custom_id) > longest:
            message = f"custom_id must be at most {longest} characters."
            return _issue("invalid_request", message, number, "custom_id")
        method_url_given = "method" in line or "url" in line
        if (self.wire.lines_need_method_url or method_url_given) and line.get("method") != "POST":
            return _issue("invalid_request", "Only the POST method is supported.", number, "method")
        if (self.wire.lines_need_method_url or method_url_given) and url != job.endpoint:
            message = f"The url {url!r} does not match the batch endpoint {job.endpoint!r}."
            return _issue("url_mismatch", message, number, "url")
        if not isinstance(body, dict):
            return _issue("invalid_request", "Each line needs an object 'body'.", number, "body")
        if custom_id in seen:
            return _issue("duplicate_custom_id", DUPLICATE, number, "custom_id")
        seen.add(custom_id)
        model = body.get("model")
        if isinstance(model, str) and job.model is None:
            job.model = model
        elif isinstance(model, str) and model != job.model:
            message = f"All requests in a batch must use the same model; this line uses {model!r}."
            return _issue("model_mismatch", message, number, "body.model")
        job.items.append(JobItem(custom_id, body, number))
        return None

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome:
        try:
            if job.endpoint == CHAT:
                body = chat_completion(item.body, state.models, item.custom_id, state.clock.ts())
                runaway = state.faults.runaway_output_tokens
                if runaway and not (
                    _positive_int(item.body, "max_tokens") or _positive_int(item.body, "max_completion_tokens")
                ):
                    body = _ramble(body, runaway)
                output = body["usage"]["completion_tokens"]
            else:
                body, output = embeddings(item.body, state.models), 0
        except ApiError as err:
            return ItemOutcome(item.custom_id, err.status, self.error_body(err))
        usage = body["usage"]
        return ItemOutcome(item.custom_id, 200, body, input_tokens=usage["prompt_tokens"], output_tokens=output)

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        now, written = state.clock.ts(), []
        expires = now + job.extra.get("output_ttl_s", FILE_TTL_S)
        corrupt = state.faults.malformed_output_line
        for ok, key, suffix in ((True, "output_file_id", "output"), (False, "error_file_id", "error")):
            chosen = [o for o in outcomes if o.ok is ok]
            # Azure points error_file_id at an empty file even when nothing failed.
            if chosen or (not ok and self.wire.always_error_file):
                name = f"batch_{job.id}_{suffix}.jsonl"
                lines = self._lines(job, chosen, corrupt, nested=state.faults.nested_output_line and ok)
                stored = state.files.write_lines(
                    lines, filename=name, purpose="batch_output", created_at=now, expires_at=expires
                )
                job.extra[key], corrupt = stored.id, False
                written.append(stored)
        return written

    @staticmethod
    def _lines(job: Job, outcomes: Sequence[ItemOutcome], corrupt_first: bool, nested: bool = False) -> Iterator[bytes]:
        for index, outcome in enumerate(outcomes):
            response = error = None
            if outcome.status_code is None:
                error = {"code": outcome.error_code, "message": outcome.error_message}
            else:
                request_id = stable_id("req_", "request", job.id, outcome.custom_id, length=32)
                body: Any = POISON_NESTING if nested and index == 0 else outcome.body
                response = {"status_code": outcome.status_code, "request_id": request_id, "body": body}
            line_id = stable_id("batch_req_", job.id, outcome.custom_id)
            encoded = msgspec.json.encode(
                {"id": line_id, "custom_id": outcome.custom_id, "response": response, "error": error}
            )
            yield encoded[: len(encoded) // 2] if corrupt_first and index == 0 else encoded
