"""The Gemini API batch mode (``/v1beta``) on top of the generic emulator machinery.

Two kinds of batch: ``models/{m}:batchGenerateContent`` (GenerateContentRequests) and
``models/{m}:asyncBatchEmbedContent`` (EmbedContentRequests, answered with the OpenAI emulator's vector and
token count for the same text). Either is a long-running Operation whose ``metadata`` is a
GenerateContentBatch or EmbedContentBatch with ``BATCH_STATE_*`` states and int64-as-string ``batchStats``.
Input comes inline in the create call or as a JSONL file of ``{"key", "request"}`` lines sent through the
resumable File API (:mod:`gateway.simulator.gemini_files`); results come back inline, in input order, under
``inlinedResponses.inlinedResponses`` (both kinds, as the service sends them; the SDKs rename the embeddings
one ``inlinedEmbedContentResponses``), or as a responses file of ``{"key", "response" | "error"}`` lines
(the only variant ``shuffle_output`` applies to). An expired batch has no results; a cancelled one keeps the
results of the requests that ran in ``metadata.output``. Errors use Google's
``{"error": {code, message, status, details}}`` body, with the 429 retry hint as ``RetryInfo.retryDelay``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from litestar import delete, get, post

from gateway.simulator.errors import ApiError, refused_key_error
from gateway.simulator.file_store import StoredFile
from gateway.simulator.gemini_files import (
    FILE_ROUTES,
    FILE_TTL_S,
    FileApi,
    Req,
    invalid,
    json_field,
    json_object,
    rfc3339,
)
from gateway.simulator.jobs import EXPIRED, ItemOutcome, Job, JobItem
from gateway.simulator.model import (
    POISON_NESTING,
    Reply,
    embedding_vector,
    model_reply,
    random_id,
    stable_id,
    text_tokens,
)
from gateway.simulator.openai_protocol import MAX_DIMENSIONS
from gateway.simulator.state import DAY_S, EmulatorState, emulator_of, note
from gateway.translate.gemini import GOOGLE_STATUS_HTTP, GRPC_STATUS_NAMES, HTTP_STATUS_NAMES

TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."
GENERATE, EMBED = "batchGenerateContent", "asyncBatchEmbedContent"
BATCH_TYPES = {GENERATE: "GenerateContentBatch", EMBED: "EmbedContentBatch"}
"""Create method (also the job's ``endpoint``) -> the batch resource's type; its output type adds ``Output``."""
CREATE_REQUESTS = {GENERATE: "BatchGenerateContentRequest", EMBED: "AsyncBatchEmbedContentRequest"}
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
INLINE_LIMIT_BYTES = 20 * 1024 * 1024
BATCH_TTL_S = 2 * DAY_S
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
TASK_TYPES = frozenset({
    "TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
    "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY",
})  # fmt: skip
"""``EmbedContentRequest.taskType`` values."""
DEFAULT_DIMENSIONS = 8
"""Vector size without ``outputDimensionality``, as the OpenAI emulator's without ``dimensions``."""


# --- the deterministic model in GenerateContent and EmbedContent shape ------------------------------------


def _part_texts(content: Any, where: str) -> list[str]:
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list) or not parts or not all(isinstance(p, Mapping) and p for p in parts):
        raise invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    return [p["text"] for p in parts if isinstance(p.get("text"), str) and p.get("thought") is not True]


def _positive(config: Mapping[str, Any], name: str) -> int | None:
    value = config.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise invalid(f"* GenerateContentRequest.generation_config.{name}: must be a positive integer.")
    return value


def simulate_generate(request: Mapping[str, Any]) -> tuple[Reply, int]:
    """The emulated model's reply to a GenerateContentRequest, and the number of candidates.

    Every text part is one "message" of the deterministic model, so a request translated from OpenAI
    format gets the same text and token counts as the OpenAI emulator gives the original.
    """
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified")
    system = request.get("systemInstruction", request.get("system_instruction"))
    texts = _part_texts(system, "system_instruction") if system is not None else []
    echo: str | None = None
    for index, content in enumerate(contents):
        role = content.get("role", "user") if isinstance(content, Mapping) else None
        if role not in ("user", "model"):
            raise invalid(f"* GenerateContentRequest.contents[{index}].role: Please use a valid role: user, model.")
        found = _part_texts(content, f"contents[{index}]")
        texts += found
        echo = found[-1] if role == "user" and found else echo
    config = json_field(request, "generationConfig", "generation_config") or {}
    if not isinstance(config, Mapping):
        raise invalid("* GenerateContentRequest.generation_config: must be an object.")
    stops = config.get("stopSequences", config.get("stop_sequences")) or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("* GenerateContentRequest.generation_config.stop_sequences: must be a list of strings.")
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


def embed_content(request: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A SingleEmbedContentResponse (raises a 400 ``ApiError`` for an invalid EmbedContentRequest).

    The text parts are embedded as one text, so the vector and ``tokenCount`` equal what the OpenAI
    emulator's embeddings give for that text; ``taskType`` and ``title`` are checked but change nothing.
    """
    content = request.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    parts = parts if isinstance(parts, list) else []
    texts = [p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    if not texts:
        raise invalid("* EmbedContentRequest.content: content must have at least one text part.")
    named = request.get("model")
    if named is not None and (not isinstance(named, str) or named.removeprefix("models/") != model):
        raise invalid(f"* EmbedContentRequest.model: every request must use the batch's model models/{model}.")
    task = json_field(request, "taskType", "task_type")
    if task is not None and (not isinstance(task, str) or task not in TASK_TYPES):
        raise invalid(f"* EmbedContentRequest.task_type: invalid value {task!r}.")
    if not isinstance(request.get("title", ""), str):
        raise invalid("* EmbedContentRequest.title: must be a string.")
    size = json_field(request, "outputDimensionality", "output_dimensionality")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_DIMENSIONS):
        message = f"* EmbedContentRequest.output_dimensionality: must be between 1 and {MAX_DIMENSIONS}."
        raise invalid(message)
    text = "".join(texts)
    return {
        "embedding": {"values": embedding_vector(text, size or DEFAULT_DIMENSIONS)},
        "tokenCount": text_tokens(text),
    }


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
    name, extra, kind = f"batches/{job.id}", job.extra, BATCH_TYPES[job.endpoint]
    metadata: dict[str, Any] = {
        "@type": TYPE_PREFIX + kind, "name": name, "model": f"models/{job.model}",
        "displayName": extra["display_name"], "createTime": rfc3339(job.created_at),
        "updateTime": rfc3339(max([job.created_at, *job.times.values()])), "batchStats": _stats(job),
        "state": STATES[job.status], "priority": extra["priority"],
    }  # fmt: skip
    if extra.get("input_file"):
        metadata["inputConfig"] = {"fileName": f"files/{extra['input_file']}"}
    result: dict[str, Any] = {"name": name, "metadata": metadata, "done": job.status in ("completed", *ENDED)}
    if result["done"]:
        metadata["endTime"] = metadata["updateTime"]
    output = {"@type": f"{TYPE_PREFIX}{kind}Output", **extra.get("output", {})}
    if extra.get("output"):
        metadata["output"] = output
    if job.status == "completed":
        result["response"] = output
    elif job.status in ENDED:
        code, message = ENDED[job.status]
        detail = "; ".join(str(e.get("message")) for e in job.errors) or "The batch failed."
        result["error"] = {"code": code, "message": message or detail}
    return result


def _rpc_status(body: Mapping[str, Any] | None) -> dict[str, Any]:
    error = (body or {}).get("error") or {}
    return {"code": GRPC_CODES.get(str(error.get("status")), 2), "message": str(error.get("message", ""))}


def _result(outcome: ItemOutcome) -> dict[str, Any]:
    return {"response": outcome.body} if outcome.ok else {"error": _rpc_status(outcome.body)}


class GeminiDriver:
    """Validation, execution and results of Gemini batches; ``file_api`` holds the File API's state."""

    kind = "gemini"
    answers_in_files = False
    base_path = ""

    def __init__(self) -> None:
        self.file_api = FileApi()

    def route_handlers(self) -> list[Any]:
        return [model_method, list_models, list_batches, get_batch, batch_action, delete_batch, *FILE_ROUTES]

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

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        return refused_key_error()

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
        try:
            if job.endpoint == EMBED:
                body = embed_content(item.body, job.model or "")
                return ItemOutcome(item.custom_id, 200, body, input_tokens=body["tokenCount"])
            response_id = stable_id("", job.id, str(item.line), item.custom_id, length=22)
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
            # Embeddings batches answer under the same key (the SDKs rename it inlinedEmbedContentResponses).
            results = [{"metadata": meta, **_result(o)} for (meta, _), o in zip(inline, job.outcomes, strict=True)
                       if o.status_code is not None]  # fmt: skip
            first = next((result for result in results if "response" in result), None)
            if state.faults.nested_output_line and first is not None:  # poison in the middle of the one answer
                first["response"] = POISON_NESTING
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
        self.file_api.mime_types[stored.id] = "application/jsonl"
        job.extra["output"] = {"responsesFile": f"files/{stored.id}"}
        return [stored]


# --- routes ---------------------------------------------------------------------------------------------


def _page(request: Req, items: Sequence[dict[str, Any]], key: str, default: int) -> dict[str, Any]:
    size, token = request.query_params.get("pageSize", str(default)), request.query_params.get("pageToken", "0")
    if not size.isdigit() or not token.isdigit():
        raise invalid("pageSize and pageToken must be the values this API handed out.")
    start, size = int(token), min(max(int(size), 1), 1000)
    page: dict[str, Any] = {key: list(items[start : start + size])}
    if start + size < len(items):
        page["nextPageToken"] = str(start + size)
    return page


def _job(request: Req, name: str) -> Job:
    job = emulator_of(request).jobs.get(name.removeprefix("batches/"))
    if job is None:
        raise invalid(f"Batch batches/{name} not found.", "NOT_FOUND")
    return job


@post("/v1beta/models/{name:str}", status_code=200)
async def model_method(request: Req) -> Any:
    """``models/{model}:{method}``: a batch create, or the synchronous ``generateContent`` / ``embedContent``."""
    from gateway.simulator.gemini_sync import EMBED_ONE, GENERATE, embed, generate

    name = request.path_params["name"]
    emu = emulator_of(request)
    model, _, method = name.rpartition(":")
    if method not in (*CREATE_REQUESTS, GENERATE, EMBED_ONE):
        raise invalid(f"Method {method!r} is not served here.", "NOT_FOUND")
    if model not in emu.models:
        raise invalid(f"models/{model} is not found for API version v1beta.", "NOT_FOUND")
    if method == GENERATE:
        return await generate(request, model)
    if method == EMBED_ONE:
        return await embed(request, model)
    return await _create_batch(request, model, method)


async def _create_batch(request: Req, model: str, method: str) -> dict[str, Any]:
    emu = emulator_of(request)
    if int(request.headers.get("content-length") or 0) > INLINE_LIMIT_BYTES:
        raise invalid(f"Request payload size exceeds the limit: {INLINE_LIMIT_BYTES} bytes.")
    batch = (await json_object(request)).get("batch")
    config = json_field(batch, "inputConfig", "input_config") if isinstance(batch, dict) else None
    if not isinstance(batch, dict) or not isinstance(config, dict):
        raise invalid(f"* {CREATE_REQUESTS[method]}.batch.input_config: input_config is required.")
    requests, file_name = config.get("requests"), json_field(config, "fileName", "file_name")
    now = emu.clock.ts()
    extra: dict[str, Any] = {"display_name": str(json_field(batch, "displayName", "display_name") or ""),
                             "priority": str(batch.get("priority", "0"))}  # fmt: skip
    if isinstance(requests, dict) and file_name is None:
        listed = requests.get("requests")
        if not isinstance(listed, list) or not listed or not all(isinstance(r, dict) for r in listed):
            raise invalid("* input_config.requests.requests: must be a non-empty list of InlinedRequest.")
        if any(not isinstance(r.get("request"), dict) for r in listed) or len(listed) > emu.max_lines:
            raise invalid(f"Each inlined request needs a 'request' object, at most {emu.max_lines} of them.")
        extra["inline"] = [(r["metadata"] if isinstance(r.get("metadata"), dict) else {}, r["request"]) for r in listed]
        extra["request_count"] = len(listed)
    elif isinstance(file_name, str) and requests is None:
        stored = emu.files.files.get(file_name.removeprefix("files/"))
        if stored is None or stored.purpose != "batch":
            raise invalid(f"File {file_name} not found.", "NOT_FOUND")
        extra["input_file"] = stored.id
    else:
        raise invalid("* input_config: exactly one of requests or file_name must be set.")
    job = Job(random_id("", 24), method, now, now + BATCH_TTL_S, None, extra, model=model)
    emu.launch(job)
    note(request, batch=f"batches/{job.id}", display_name=extra["display_name"], source=extra.get("input_file"))
    return operation(job)


@get("/v1beta/models")
async def list_models(request: Req) -> dict[str, Any]:
    methods = ["generateContent", GENERATE, "countTokens", "embedContent", EMBED]
    models = [{"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": methods}
              for m in emulator_of(request).models]  # fmt: skip
    return _page(request, models, "models", 50)


@get("/v1beta/batches")
async def list_batches(request: Req) -> dict[str, Any]:
    jobs = [operation(job) for job in reversed(emulator_of(request).jobs.values())]
    return _page(request, jobs, "operations", 50)


@get("/v1beta/batches/{name:str}")
async def get_batch(request: Req) -> dict[str, Any]:
    name = request.path_params["name"]
    return operation(_job(request, name))


@post("/v1beta/batches/{name:str}", status_code=200)
async def batch_action(request: Req) -> dict[str, Any]:
    name = request.path_params["name"]
    ident, _, action = name.rpartition(":")
    if action == "delete":
        return _delete(request, ident)
    if action != "cancel":
        raise invalid(f"Method {action!r} is not served here.", "NOT_FOUND")
    job = _job(request, ident)
    if job.status in ("completed", *ENDED):
        raise invalid(f"Batch batches/{job.id} has already ended.", "FAILED_PRECONDITION")
    emulator_of(request).request_cancel(job)
    return {}


@delete("/v1beta/batches/{name:str}", status_code=200)
async def delete_batch(request: Req) -> dict[str, Any]:
    name = request.path_params["name"]
    return _delete(request, name)


def _delete(request: Req, name: str) -> dict[str, Any]:
    job = _job(request, name)
    emu = emulator_of(request)
    emu.request_cancel(job)
    del emu.jobs[job.id]
    return {}
