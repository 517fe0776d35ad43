"""The Gemini API batch mode (``/v1beta``) on top of the generic emulator machinery.

A batch is a long-running Operation whose ``metadata`` is a GenerateContentBatch with ``BATCH_STATE_*``
states and int64-as-string ``batchStats``. Input comes inline in the create call or as a JSONL file sent
through the resumable File API; results come back inline, in input order, or as a responses file (the
only variant ``shuffle_output`` applies to). An expired batch has no results; a cancelled one keeps the
results of the requests that ran in ``metadata.output``. Errors use Google's ``{"error": {code, message,
status, details}}`` body, with the 429 retry hint as ``RetryInfo.retryDelay``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.response import File

from gateway.simulator.core import (
    DAY_S,
    EXPIRED,
    LOG_DETAIL,
    ApiError,
    EmulatorState,
    ItemOutcome,
    Job,
    JobItem,
    Reply,
    StoredFile,
    emulator_of,
    model_reply,
    random_id,
    stable_id,
)
from gateway.translate.gemini import GOOGLE_STATUS_HTTP, GRPC_STATUS_NAMES, HTTP_STATUS_NAMES

Req = Request[Any, Any, Any]

TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
INLINE_LIMIT_BYTES = 20 * 1024 * 1024
BATCH_TTL_S = 2 * DAY_S
FILE_TTL_S = 2 * DAY_S
STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}
"""Emulator job status -> Gemini ``BatchState``."""
ENDED = {"failed": (3, None), "cancelled": (1, "The batch was cancelled."), "expired": (4, "The batch expired.")}
"""Terminal status -> ``google.rpc.Status`` code and message of the Operation's ``error``."""
GRPC_CODES = {name: code for code, name in enumerate(GRPC_STATUS_NAMES)}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _invalid(message: str, status: str = "INVALID_ARGUMENT") -> ApiError:
    return ApiError(GOOGLE_STATUS_HTTP[status], message, code=status)


def _field(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Google's JSON mapping accepts both spellings of a field name."""
    return obj.get(camel, obj.get(snake))


# --- the deterministic model in GenerateContent shape ---------------------------------------------------


def _part_texts(content: Any, where: str) -> list[str]:
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list) or not parts or not all(isinstance(p, Mapping) and p for p in parts):
        raise _invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    return [p["text"] for p in parts if isinstance(p.get("text"), str) and p.get("thought") is not True]


def _positive(config: Mapping[str, Any], name: str) -> int | None:
    value = config.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _invalid(f"* GenerateContentRequest.generation_config.{name}: must be a positive integer.")
    return value


def simulate_generate(request: Mapping[str, Any]) -> tuple[Reply, int]:
    """The emulated model's reply to a GenerateContentRequest, and the number of candidates.

    Every text part is one "message" of the deterministic model, so a request translated from OpenAI
    format gets the same text and token counts as the OpenAI emulator gives the original.
    """
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified")
    system = request.get("systemInstruction", request.get("system_instruction"))
    texts = _part_texts(system, "system_instruction") if system is not None else []
    echo: str | None = None
    for index, content in enumerate(contents):
        role = content.get("role", "user") if isinstance(content, Mapping) else None
        if role not in ("user", "model"):
            raise _invalid(f"* GenerateContentRequest.contents[{index}].role: Please use a valid role: user, model.")
        found = _part_texts(content, f"contents[{index}]")
        texts += found
        echo = found[-1] if role == "user" and found else echo
    config = _field(request, "generationConfig", "generation_config") or {}
    if not isinstance(config, Mapping):
        raise _invalid("* GenerateContentRequest.generation_config: must be an object.")
    stops = config.get("stopSequences", config.get("stop_sequences")) or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("* GenerateContentRequest.generation_config.stop_sequences: must be a list of strings.")
    cap = _positive(config, "maxOutputTokens")
    reply = model_reply(texts, echo if echo is not None else (texts[-1] if texts else ""), cap, stops)
    return reply, _positive(config, "candidateCount") or 1


def generate_content(request: Mapping[str, Any], model: str, response_id: str) -> dict[str, Any]:
    """A GenerateContentResponse (raises a 400 ``ApiError`` for an invalid request)."""
    reply, count = simulate_generate(request)
    finish = "MAX_TOKENS" if reply.finish_reason == "length" else "STOP"
    content = {"role": "model", "parts": [{"text": reply.content}]}
    output = reply.completion_tokens * count
    return {
        "candidates": [{"content": content, "finishReason": finish, "index": i} for i in range(count)],
        "usageMetadata": {
            "promptTokenCount": reply.prompt_tokens, "candidatesTokenCount": output,
            "totalTokenCount": reply.prompt_tokens + output,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}],
        },
        "modelVersion": model, "responseId": response_id,
    }  # fmt: skip


# --- resources ------------------------------------------------------------------------------------------


def _stats(job: Job) -> dict[str, str]:
    ran = [o for o in job.outcomes if o.status_code is not None]
    succeeded = sum(o.ok for o in ran)
    total = job.total or int(job.extra.get("request_count", 0))
    counts = (total, succeeded, len(ran) - succeeded, max(0, total - len(ran)))
    names = ("requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount")
    return {name: str(value) for name, value in zip(names, counts, strict=True)}


def operation(job: Job) -> dict[str, Any]:
    """The Operation of a batch; ``response`` and ``metadata.output`` carry the same results."""
    name, extra = f"batches/{job.id}", job.extra
    metadata: dict[str, Any] = {
        "@type": TYPE_PREFIX + "GenerateContentBatch", "name": name, "model": f"models/{job.model}",
        "displayName": extra["display_name"], "createTime": rfc3339(job.created_at),
        "updateTime": rfc3339(max([job.created_at, *job.times.values()])), "batchStats": _stats(job),
        "state": STATES[job.status], "priority": extra["priority"],
    }  # fmt: skip
    if extra.get("input_file"):
        metadata["inputConfig"] = {"fileName": f"files/{extra['input_file']}"}
    result: dict[str, Any] = {"name": name, "metadata": metadata, "done": job.status in ("completed", *ENDED)}
    if result["done"]:
        metadata["endTime"] = metadata["updateTime"]
    output = {"@type": TYPE_PREFIX + "GenerateContentBatchOutput", **extra.get("output", {})}
    if extra.get("output"):
        metadata["output"] = output
    if job.status == "completed":
        result["response"] = output
    elif job.status in ENDED:
        code, message = ENDED[job.status]
        detail = "; ".join(str(e.get("message")) for e in job.errors) or "The batch failed."
        result["error"] = {"code": code, "message": message or detail}
    return result


def file_resource(stored: StoredFile, mime_type: str, base_url: str) -> dict[str, Any]:
    return {
        "name": f"files/{stored.id}", "displayName": stored.filename, "mimeType": mime_type,
        "sizeBytes": str(stored.bytes), "createTime": rfc3339(stored.created_at),
        "updateTime": rfc3339(stored.created_at), "expirationTime": rfc3339(stored.expires_at or stored.created_at),
        "uri": f"{base_url}/v1beta/files/{stored.id}", "state": "ACTIVE",
        "source": "GENERATED" if stored.purpose == "batch_output" else "UPLOADED",
    }  # fmt: skip


def _rpc_status(body: Mapping[str, Any] | None) -> dict[str, Any]:
    error = (body or {}).get("error") or {}
    return {"code": GRPC_CODES.get(str(error.get("status")), 2), "message": str(error.get("message", ""))}


def _result(outcome: ItemOutcome) -> dict[str, Any]:
    return {"response": outcome.body} if outcome.ok else {"error": _rpc_status(outcome.body)}


@dataclass
class _Upload:
    display_name: str
    mime_type: str
    length: int | None


class GeminiDriver:
    """Validation, execution and results of Gemini batches; also holds open upload sessions."""

    kind = "gemini"
    base_path = ""

    def __init__(self) -> None:
        self.uploads: dict[str, _Upload] = {}
        self.mime_types: dict[str, str] = {}

    def route_handlers(self) -> list[Any]:
        return [
            create_batch, list_models, list_batches, get_batch, batch_action, delete_batch,
            upload_file, get_file, delete_file, download_file,
        ]  # fmt: skip

    def error_body(self, err: ApiError) -> dict[str, Any]:
        status = err.code if err.code in GOOGLE_STATUS_HTTP else None
        status = status or HTTP_STATUS_NAMES.get(err.status, "INTERNAL" if err.status >= 500 else "INVALID_ARGUMENT")
        error: dict[str, Any] = {"code": err.status, "message": err.message, "status": status}
        delay = err.headers.pop("retry-after", None)  # Google sends the hint in the body only
        err.headers.pop("x-ratelimit-remaining-requests", None)
        if delay is not None:
            error["details"] = [{"@type": RETRY_INFO, "retryDelay": f"{delay}s"}]
        return {"error": error}

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("x-goog-api-key") == api_key

    def validate(self, state: EmulatorState, job: Job) -> None:
        inline: list[tuple[dict[str, Any], dict[str, Any]]] | None = job.extra.get("inline")
        if inline is not None:
            job.items = [JobItem(str(meta.get("key", index)), request, index + 1) for index, (meta, request) in
                         enumerate(inline)]  # fmt: skip
            return
        stored = state.files.files.get(job.extra["input_file"])
        if stored is None:
            job.errors = [{"code": "not_found", "message": "The input file was deleted.", "line": None}]
            return
        with open(stored.path, "rb") as lines:
            for number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    line = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    line = None
                key = line.get("key", "") if isinstance(line, dict) else None
                if not isinstance(key, str) or not isinstance(line, dict) or not isinstance(line.get("request"), dict):
                    message = f"Line {number} of the input file is not a JSON object with a 'request' object."
                    job.errors = [{"code": "invalid_argument", "message": message, "line": number}]
                    return
                job.items.append(JobItem(key, line["request"], number))
        if not job.items or len(job.items) > state.max_lines:
            message = f"The input file must hold between 1 and {state.max_lines} requests."
            job.errors = [{"code": "invalid_argument", "message": message, "line": None}]

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome:
        response_id = stable_id("", job.id, str(item.line), item.custom_id, length=22)
        try:
            body = generate_content(item.body, job.model or "", response_id)
        except ApiError as err:
            return ItemOutcome(item.custom_id, err.status, self.error_body(err))
        usage = body["usageMetadata"]
        tokens = {"input_tokens": usage["promptTokenCount"], "output_tokens": usage["candidatesTokenCount"]}
        return ItemOutcome(item.custom_id, 200, body, **tokens)

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        if any(o.error_code == EXPIRED[0] for o in outcomes):
            return []  # an expired batch has no results at all
        inline = job.extra.get("inline")
        if inline is not None:
            # Documented to keep the input order: job.outcomes is in item order, whatever the shuffle did.
            results = [{"metadata": meta, **_result(o)} for (meta, _), o in zip(inline, job.outcomes, strict=True)
                       if o.status_code is not None]  # fmt: skip
            job.extra["output"] = {"inlinedResponses": {"inlinedResponses": results}}
            return []
        ran = [o for o in outcomes if o.status_code is not None]
        if not ran:
            return []
        lines = [msgspec.json.encode({**({"key": o.custom_id} if o.custom_id else {}), **_result(o)}) for o in ran]
        if state.faults.malformed_output_line:
            lines[0] = lines[0][: len(lines[0]) // 2]
        now = state.clock.ts()
        stored = state.files.write_lines(
            lines, filename=f"batch-{job.id}-responses", purpose="batch_output", created_at=now,
            expires_at=now + FILE_TTL_S,
        )  # fmt: skip
        self.mime_types[stored.id] = "application/jsonl"
        job.extra["output"] = {"responsesFile": f"files/{stored.id}"}
        return [stored]


# --- routes ---------------------------------------------------------------------------------------------


def _driver(emu: EmulatorState) -> GeminiDriver:
    assert isinstance(emu.driver, GeminiDriver)
    return emu.driver


def _note(request: Req, **detail: Any) -> None:
    request.scope.get("state", {}).setdefault(LOG_DETAIL, {}).update(detail)


async def _json_object(request: Req) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(await request.body() or b"{}")
    except msgspec.DecodeError:
        raise _invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received: expected an object.")
    return body


def _page(request: Req, items: Sequence[dict[str, Any]], key: str, default: int) -> dict[str, Any]:
    size, token = request.query_params.get("pageSize", str(default)), request.query_params.get("pageToken", "0")
    if not size.isdigit() or not token.isdigit():
        raise _invalid("pageSize and pageToken must be the values this API handed out.")
    start, size = int(token), min(max(int(size), 1), 1000)
    page: dict[str, Any] = {key: list(items[start : start + size])}
    if start + size < len(items):
        page["nextPageToken"] = str(start + size)
    return page


def _job(request: Req, name: str) -> Job:
    job = emulator_of(request).jobs.get(name.removeprefix("batches/"))
    if job is None:
        raise _invalid(f"Batch batches/{name} not found.", "NOT_FOUND")
    return job


@post("/v1beta/models/{name:str}", status_code=200)
async def create_batch(request: Req, name: str) -> dict[str, Any]:
    emu = emulator_of(request)
    model, _, method = name.rpartition(":")
    if method != "batchGenerateContent":
        raise _invalid(f"Method {method!r} is not served here.", "NOT_FOUND")
    if model not in emu.models:
        raise _invalid(f"models/{model} is not found for API version v1beta.", "NOT_FOUND")
    if int(request.headers.get("content-length") or 0) > INLINE_LIMIT_BYTES:
        raise _invalid(f"Request payload size exceeds the limit: {INLINE_LIMIT_BYTES} bytes.")
    batch = (await _json_object(request)).get("batch")
    config = _field(batch, "inputConfig", "input_config") if isinstance(batch, dict) else None
    if not isinstance(batch, dict) or not isinstance(config, dict):
        raise _invalid("* BatchGenerateContentRequest.batch.input_config: input_config is required.")
    requests, file_name = config.get("requests"), _field(config, "fileName", "file_name")
    now = emu.clock.ts()
    extra: dict[str, Any] = {"display_name": str(_field(batch, "displayName", "display_name") or ""),
                             "priority": str(batch.get("priority", "0"))}  # fmt: skip
    if isinstance(requests, dict) and file_name is None:
        listed = requests.get("requests")
        if not isinstance(listed, list) or not listed or not all(isinstance(r, dict) for r in listed):
            raise _invalid("* input_config.requests.requests: must be a non-empty list of InlinedRequest.")
        if any(not isinstance(r.get("request"), dict) for r in listed) or len(listed) > emu.max_lines:
            raise _invalid(f"Each inlined request needs a 'request' object, at most {emu.max_lines} of them.")
        extra["inline"] = [(r["metadata"] if isinstance(r.get("metadata"), dict) else {}, r["request"]) for r in listed]
        extra["request_count"] = len(listed)
    elif isinstance(file_name, str) and requests is None:
        stored = emu.files.files.get(file_name.removeprefix("files/"))
        if stored is None or stored.purpose != "batch":
            raise _invalid(f"File {file_name} not found.", "NOT_FOUND")
        extra["input_file"] = stored.id
    else:
        raise _invalid("* input_config: exactly one of requests or file_name must be set.")
    job = Job(random_id("", 24), "batchGenerateContent", now, now + BATCH_TTL_S, None, extra, model=model)
    emu.launch(job)
    _note(request, batch=f"batches/{job.id}", display_name=extra["display_name"], source=extra.get("input_file"))
    return operation(job)


@get("/v1beta/models")
async def list_models(request: Req) -> dict[str, Any]:
    methods = ["generateContent", "batchGenerateContent", "countTokens"]
    models = [{"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": methods}
              for m in emulator_of(request).models]  # fmt: skip
    return _page(request, models, "models", 50)


@get("/v1beta/batches")
async def list_batches(request: Req) -> dict[str, Any]:
    jobs = [operation(job) for job in reversed(emulator_of(request).jobs.values())]
    return _page(request, jobs, "operations", 50)


@get("/v1beta/batches/{name:str}")
async def get_batch(request: Req, name: str) -> dict[str, Any]:
    return operation(_job(request, name))


@post("/v1beta/batches/{name:str}", status_code=200)
async def batch_action(request: Req, name: str) -> dict[str, Any]:
    ident, _, action = name.rpartition(":")
    if action == "delete":
        return _delete(request, ident)
    if action != "cancel":
        raise _invalid(f"Method {action!r} is not served here.", "NOT_FOUND")
    job = _job(request, ident)
    if job.status in ("completed", *ENDED):
        raise _invalid(f"Batch batches/{job.id} has already ended.", "FAILED_PRECONDITION")
    emulator_of(request).request_cancel(job)
    return {}


@delete("/v1beta/batches/{name:str}", status_code=200)
async def delete_batch(request: Req, name: str) -> dict[str, Any]:
    return _delete(request, name)


def _delete(request: Req, name: str) -> dict[str, Any]:
    job = _job(request, name)
    emu = emulator_of(request)
    emu.request_cancel(job)
    del emu.jobs[job.id]
    return {}


def _reader(request: Req) -> Callable[[int], Awaitable[bytes]]:
    stream = request.stream()

    async def read(_: int) -> bytes:
        async for chunk in stream:
            if chunk:
                return chunk
        return b""

    return read


@post("/upload/v1beta/files", status_code=200)
async def upload_file(request: Req) -> Response[Any]:
    emu, headers = emulator_of(request), request.headers
    driver = _driver(emu)
    commands = {part.strip() for part in headers.get("x-goog-upload-command", "").lower().split(",")}
    upload_id = request.query_params.get("upload_id")
    if upload_id is None:
        if headers.get("x-goog-upload-protocol") != "resumable" or "start" not in commands:
            raise _invalid("Send X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start first.")
        meta = (await _json_object(request)).get("file") or {}
        length = headers.get("x-goog-upload-header-content-length", "")
        upload_id = random_id("", 32)
        driver.uploads[upload_id] = _Upload(
            str(_field(meta, "displayName", "display_name") or ""),
            headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
            int(length) if length.isdigit() else None,
        )
        url = f"{str(request.base_url).rstrip('/')}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return Response(b"", headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
    session = driver.uploads.pop(upload_id, None)
    if session is None:
        raise _invalid("No such upload session.", "NOT_FOUND")
    if commands != {"upload", "finalize"} or headers.get("x-goog-upload-offset", "0") != "0":
        raise _invalid("This emulator takes the whole file in one 'upload, finalize' call at offset 0.")
    now = emu.clock.ts()
    stored = await emu.files.save_stream(
        _reader(request), emu.max_file_bytes, filename=session.display_name, purpose="batch", created_at=now,
        expires_at=now + FILE_TTL_S,
    )  # fmt: skip
    if session.length is not None and stored.bytes != session.length:
        emu.files.delete(stored.id)
        raise _invalid(f"Received {stored.bytes} bytes, announced {session.length}.")
    driver.mime_types[stored.id] = session.mime_type
    emu.stats.files_uploaded += 1
    emu.stats.bytes_uploaded += stored.bytes
    _note(request, file=f"files/{stored.id}", bytes=stored.bytes, lines=stored.lines)
    resource = file_resource(stored, session.mime_type, str(request.base_url).rstrip("/"))
    return Response({"file": resource}, headers={"x-goog-upload-status": "final"})


def _stored(request: Req, name: str) -> StoredFile:
    stored = emulator_of(request).files.files.get(name)
    if stored is None:
        raise _invalid(f"File files/{name} not found.", "NOT_FOUND")
    return stored


@get("/v1beta/files/{name:str}")
async def get_file(request: Req, name: str) -> dict[str, Any]:
    mime = _driver(emulator_of(request)).mime_types.get(name, "application/octet-stream")
    return file_resource(_stored(request, name), mime, str(request.base_url).rstrip("/"))


@delete("/v1beta/files/{name:str}", status_code=200)
async def delete_file(request: Req, name: str) -> dict[str, Any]:
    emulator_of(request).files.delete(_stored(request, name).id)
    return {}


@get("/download/v1beta/files/{name:str}")
async def download_file(request: Req, name: str) -> File:
    ident, _, action = name.rpartition(":")
    if action != "download" or request.query_params.get("alt") != "media":
        raise _invalid("Download with GET /download/v1beta/files/{id}:download?alt=media.")
    stored = _stored(request, ident)
    return File(path=stored.path, filename=f"{stored.id}.jsonl", media_type="application/octet-stream")
