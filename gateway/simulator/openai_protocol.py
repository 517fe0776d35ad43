"""The OpenAI Files + Batches protocol (also spoken by Groq and Together) on top of the generic machinery."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Router, delete, get, post
from litestar.datastructures import UploadFile
from litestar.response import File

from gateway.simulator.core import (
    DAY_S,
    LOG_DETAIL,
    MAX_VALIDATION_ERRORS,
    ApiError,
    EmulatorState,
    ItemOutcome,
    Job,
    JobItem,
    Reply,
    StoredFile,
    embedding_vector,
    emulator_of,
    model_reply,
    not_found,
    openai_error_body,
    pack_floats,
    random_id,
    stable_id,
    text_tokens,
)

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
SERVED_ENDPOINTS = (CHAT, EMBEDDINGS)
FILE_TTL_S = 30 * DAY_S
TTL_MIN_S, TTL_MAX_S = 3600, 30 * DAY_S
MAX_DIMENSIONS = 4096


def _invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
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
        raise _invalid(name, f"Invalid value for '{name}': expected an integer >= 1.")
    return value


def _served_model(body: Mapping[str, Any], models: Sequence[str]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "You must provide a model parameter.", "missing_required_parameter")
    if model not in models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        raise _invalid("model", message, "model_not_found")
    return model


def simulate_chat(body: Mapping[str, Any]) -> Reply:
    """The emulated model's reply to a chat completion body (raises a 400 ``ApiError`` if invalid)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _invalid("messages", "'messages' must be a non-empty array of objects.")
    if body.get("stream"):
        raise _invalid("stream", "Streaming is not supported in batch requests.")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise _invalid("stop", "'stop' must be a string or an array of up to 4 strings.")
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
        raise _invalid("input", "'input' must be a string, an array of strings or of token arrays.")
    dimensions = _positive_int(body, "dimensions") or 8
    if dimensions > MAX_DIMENSIONS:
        raise _invalid("dimensions", f"'dimensions' must be at most {MAX_DIMENSIONS}.")
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


# --- object shapes -------------------------------------------------------------------------------------


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id, "object": "file", "bytes": stored.bytes, "created_at": stored.created_at,
        "expires_at": stored.expires_at, "filename": stored.filename, "purpose": stored.purpose,
        "status": "processed", "status_details": None,
    }  # fmt: skip


def batch_object(job: Job) -> dict[str, Any]:
    times, extra = job.times, job.extra
    stamps = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
    return {
        "id": job.id, "object": "batch", "endpoint": job.endpoint, "model": job.model,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "input_file_id": extra["input_file_id"], "completion_window": extra["completion_window"],
        "status": job.status, "output_file_id": extra.get("output_file_id"),
        "error_file_id": extra.get("error_file_id"), "created_at": job.created_at, "expires_at": job.expires_at,
        **{f"{name}_at": times.get(f"{name}_at") for name in stamps},
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "usage": {
            "input_tokens": job.input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": job.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": job.input_tokens + job.output_tokens,
        },
        "metadata": job.metadata,
    }  # fmt: skip


def list_page(objects: Sequence[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """The cursor page after the object with id ``after`` (an unknown cursor gives an empty page)."""
    ids = [o["id"] for o in objects]
    start = 0 if after is None else ids.index(after) + 1 if after in ids else len(ids)
    data = list(objects[start : start + limit])
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    has_more = start + limit < len(ids)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}


def _issue(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


DUPLICATE = (
    "The custom_id for this request is a duplicate of another request. "
    "The custom_id parameter must be unique for each request in a batch."
)


class OpenAIDriver:
    """Validation, execution and result files of OpenAI batches."""

    kind = "openai"
    base_path = "/v1"

    def route_handlers(self) -> list[Any]:
        from gateway.simulator.openai_sync import SyncController

        return [Router(path=self.base_path, route_handlers=[FilesController, BatchesController, SyncController])]

    def error_body(self, err: ApiError) -> dict[str, Any]:
        kind = err.type or ("server_error" if err.status >= 500 else "invalid_request_error")
        return openai_error_body(err.message, kind, err.param, err.code)

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("authorization") == f"Bearer {api_key}"

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
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
        if line.get("method") != "POST":
            return _issue("invalid_request", "Only the POST method is supported.", number, "method")
        if url != job.endpoint:
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
            if chosen:
                name = f"batch_{job.id}_{suffix}.jsonl"
                lines = self._lines(job, chosen, corrupt)
                stored = state.files.write_lines(
                    lines, filename=name, purpose="batch_output", created_at=now, expires_at=expires
                )
                job.extra[key], corrupt = stored.id, False
                written.append(stored)
        return written

    @staticmethod
    def _lines(job: Job, outcomes: Sequence[ItemOutcome], corrupt_first: bool) -> Iterator[bytes]:
        for index, outcome in enumerate(outcomes):
            response = error = None
            if outcome.status_code is None:
                error = {"code": outcome.error_code, "message": outcome.error_message}
            else:
                request_id = stable_id("req_", "request", job.id, outcome.custom_id, length=32)
                response = {"status_code": outcome.status_code, "request_id": request_id, "body": outcome.body}
            line_id = stable_id("batch_req_", job.id, outcome.custom_id)
            encoded = msgspec.json.encode(
                {"id": line_id, "custom_id": outcome.custom_id, "response": response, "error": error}
            )
            yield encoded[: len(encoded) // 2] if corrupt_first and index == 0 else encoded


# --- routes --------------------------------------------------------------------------------------------


def _note(request: Request[Any, Any, Any], **detail: Any) -> None:
    """Attach details to this call's entry in the request log."""
    request.scope.get("state", {}).setdefault(LOG_DETAIL, {}).update(detail)


class _ExpiresAfter(msgspec.Struct, forbid_unknown_fields=True):
    anchor: Literal["created_at"]
    seconds: Annotated[int, msgspec.Meta(ge=TTL_MIN_S, le=TTL_MAX_S)]


Metadata = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=16),
]


class _BatchCreate(msgspec.Struct):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    output_expires_after: _ExpiresAfter | None = None


def _decode_create(raw: bytes) -> _BatchCreate:
    try:
        return msgspec.json.decode(raw, type=_BatchCreate)
    except msgspec.ValidationError as exc:
        # msgspec names the field as "... - at `$.metadata[...]`" or "missing required field `endpoint`"
        text = str(exc)
        where = text.split("at `$.", 1)[1] if "at `$." in text else text.partition("`")[2]
        param = where.split("`")[0].split("[")[0] or None
        raise ApiError(400, f"Invalid request: {text}", param=param, code="invalid_value") from None
    except msgspec.DecodeError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None


def _query_int(request: Request[Any, Any, Any], name: str, default: int, highest: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= highest:
        raise _invalid(name, f"'{name}' must be an integer between 1 and {highest}.")
    return int(raw)


class FilesController(Controller):
    path = "/files"

    @post("/", status_code=200)
    async def upload(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        emu = emulator_of(request)
        form = await request.form()
        upload, purpose, ttl = form.get("file"), form.get("purpose"), form.get("expires_after[seconds]")
        if not isinstance(upload, UploadFile):
            raise _invalid("file", "Missing required parameter: 'file'.", "missing_required_parameter")
        try:
            if purpose != "batch":
                raise _invalid("purpose", f"Invalid purpose {purpose!r}: this provider only accepts 'batch'.")
            if not upload.filename.endswith(".jsonl"):
                raise _invalid("file", "Invalid file format for Batch API. Must be .jsonl", "invalid_file_format")
            if ttl is not None and (not str(ttl).isdigit() or not TTL_MIN_S <= int(ttl) <= TTL_MAX_S):
                raise _invalid("expires_after.seconds", f"Must be between {TTL_MIN_S} and {TTL_MAX_S}.")
            now = emu.clock.ts()
            expires = now + (int(ttl) if ttl is not None else FILE_TTL_S)
            stored = await emu.files.save_stream(
                upload.read, emu.max_file_bytes, filename=upload.filename, purpose="batch",
                created_at=now, expires_at=expires,
            )  # fmt: skip
        finally:
            await upload.close()
        emu.stats.files_uploaded += 1
        emu.stats.bytes_uploaded += stored.bytes
        _note(request, file_id=stored.id, bytes=stored.bytes, lines=stored.lines)
        return file_object(stored)

    @get("/")
    async def list_files(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        query = request.query_params
        order, purpose = query.get("order", "desc"), query.get("purpose")
        limit = _query_int(request, "limit", 10_000, 10_000)
        if order not in ("asc", "desc"):
            raise _invalid("order", "'order' must be 'asc' or 'desc'.")
        files = [file_object(f) for f in emulator_of(request).files.files.values() if purpose in (None, f.purpose)]
        return list_page(files[::-1] if order == "desc" else files, query.get("after"), limit)

    @get("/{file_id:str}")
    async def retrieve(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        return file_object(emulator_of(request).files.get(request.path_params["file_id"]))

    @get("/{file_id:str}/content")
    async def content(self, request: Request[Any, Any, Any]) -> File:
        stored = emulator_of(request).files.get(request.path_params["file_id"])
        return File(path=stored.path, filename=stored.filename, media_type="application/octet-stream")

    @delete("/{file_id:str}", status_code=200)
    async def remove(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        deleted = emulator_of(request).files.delete(request.path_params["file_id"])
        return {"id": deleted.id, "object": "file", "deleted": True}


class BatchesController(Controller):
    path = "/batches"

    @post("/", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        emu = emulator_of(request)
        spec = _decode_create(await request.body())
        if spec.endpoint not in SERVED_ENDPOINTS:
            served = ", ".join(SERVED_ENDPOINTS)
            raise _invalid("endpoint", f"Invalid endpoint {spec.endpoint!r}: this provider serves {served}.")
        if spec.completion_window != "24h":
            raise _invalid("completion_window", "Invalid completion_window: only '24h' is supported.")
        stored = emu.files.files.get(spec.input_file_id)
        if stored is None:
            raise not_found("File", spec.input_file_id, param="input_file_id")
        if stored.purpose != "batch":
            raise _invalid("input_file_id", "The input file must have purpose 'batch'.")
        now = emu.clock.ts()
        extra: dict[str, Any] = {"input_file_id": stored.id, "completion_window": spec.completion_window}
        if spec.output_expires_after is not None:
            extra["output_ttl_s"] = spec.output_expires_after.seconds
        job = Job(random_id("batch_", 32), spec.endpoint, now, now + DAY_S, spec.metadata, extra)
        emu.launch(job)
        _note(request, batch_id=job.id, metadata=spec.metadata, input_lines=stored.lines)
        return batch_object(job)

    @get("/")
    async def list_batches(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        jobs = [batch_object(j) for j in reversed(emulator_of(request).jobs.values())]
        return list_page(jobs, request.query_params.get("after"), _query_int(request, "limit", 20, 100))

    @get("/{batch_id:str}")
    async def retrieve(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        return batch_object(_job(request))

    @post("/{batch_id:str}/cancel", status_code=200)
    async def cancel(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        job = _job(request)
        # Which states accept a cancel is unverified upstream: repeats are harmless, finished ones get 409.
        if job.status not in ("validating", "in_progress", "cancelling"):
            raise ApiError(409, f"Cannot cancel a batch with status '{job.status}'.")
        emulator_of(request).request_cancel(job)
        return batch_object(job)


def _job(request: Request[Any, Any, Any]) -> Job:
    jobs, batch_id = emulator_of(request).jobs, request.path_params["batch_id"]
    if batch_id not in jobs:
        raise not_found("Batch", batch_id)
    return jobs[batch_id]
