"""Mistral's batch API: ``/v1/files`` and ``/v1/batch/jobs``, run through the deterministic model.

A job takes uploaded ``input_files`` or inline ``requests`` (one model per job, ``timeout_hours`` up to 7
days); lines are ``{"custom_id", "body"}`` without ``method``/``url``; output and error files carry OpenAI's
output envelope without ``request_id``. Chat bodies with fields Mistral does not know get a 422 line, as its
API refuses extra inputs. Where the documentation is silent (error bodies of the batch endpoints, the
error-file line shape, what a cancel of an ended job answers) the comment says what was chosen.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Router, delete, get, post
from litestar.datastructures import UploadFile
from litestar.response import File

from gateway.simulator.errors import ApiError, not_found
from gateway.simulator.file_store import StoredFile, download
from gateway.simulator.jobs import ItemOutcome, Job, JobItem
from gateway.simulator.model import POISON_NESTING, stable_id
from gateway.simulator.openai_protocol import chat_completion, embeddings
from gateway.simulator.state import EmulatorState, emulator_of, note

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
INLINE_LIMIT = 10_000
STATUS = {
    "validating": "QUEUED", "in_progress": "RUNNING", "finalizing": "RUNNING", "completed": "SUCCESS",
    "failed": "FAILED", "expired": "TIMEOUT_EXCEEDED", "cancelling": "CANCELLATION_REQUESTED", "cancelled": "CANCELLED",
}  # fmt: skip
CHAT_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "response_format",
    "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction", "parallel_tool_calls",
    "prompt_mode", "safe_prompt",
})  # fmt: skip
ROLES = frozenset({"system", "user", "assistant", "tool"})
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "output_dimension", "output_dtype"})
Req = Request[Any, Any, Any]


def unprocessable(field: str, message: str, kind: str = "extra_forbidden") -> ApiError:
    """A 422 in FastAPI's validation shape (rendered by :meth:`MistralDriver.error_body`)."""
    return ApiError(422, message, type=kind, param=field)


def check_body(endpoint: str, body: Mapping[str, Any]) -> None:
    """Mistral refuses fields it does not know and roles it does not have."""
    allowed = EMBEDDING_FIELDS if endpoint == EMBEDDINGS else CHAT_FIELDS
    for name in body:
        if name not in allowed:
            raise unprocessable(name, "Extra inputs are not permitted")
    for message in body.get("messages") or [] if endpoint == CHAT else []:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            text = f"Input tag {role!r} found using 'role' does not match any of the expected tags"
            raise unprocessable("messages.role", text, "union_tag_invalid")


class MistralDriver:
    """Validation, execution and result files of Mistral batch jobs."""

    kind = "mistral"
    answers_in_files = False
    base_path = "/v1"

    def route_handlers(self) -> list[Any]:
        return [Router(path=self.base_path, route_handlers=[FilesController, JobsController])]

    def error_body(self, err: ApiError) -> dict[str, Any]:
        if err.status == 422:
            return {"detail": [{"type": err.type, "loc": ["body", err.param], "msg": err.message}]}
        kind = err.type or ("server_error" if err.status >= 500 else "invalid_request_error")
        return {"object": "error", "message": err.message, "type": kind, "param": err.param, "code": err.code}

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("authorization") == f"Bearer {api_key}"

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        return ApiError(401, "Unauthorized", type="invalid_request_error")

    def validate(self, state: EmulatorState, job: Job) -> None:
        """Read the input files' lines (inline jobs were read at create); a bad line fails the job."""
        seen = {item.custom_id for item in job.items}
        for file_id in job.extra["input_files"]:
            stored = state.files.files.get(file_id)
            if stored is None:
                job.errors = [{"message": f"Input file {file_id} was deleted.", "count": 1}]
                return
            with Path(stored.path).open("rb") as lines:
                for number, raw in enumerate(lines, 1):
                    if raw.strip():
                        problem = _add_item(job, raw, number, seen)
                        if problem:
                            job.errors.append({"message": problem, "count": 1})
        if len(job.items) > state.max_lines:
            job.errors = [{"message": f"A job holds at most {state.max_lines} requests.", "count": 1}]
        elif not job.items and not job.errors:
            job.errors = [{"message": "The job has no requests.", "count": 1}]

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome:
        body = {**item.body, "model": job.model}
        try:
            check_body(job.endpoint, item.body)
            if job.endpoint == CHAT:
                answer = chat_completion(_openai_chat(body), state.models, item.custom_id, state.clock.ts())
                for extra in ("service_tier", "system_fingerprint"):
                    answer.pop(extra, None)
                output = answer["usage"]["completion_tokens"]
            else:
                answer, output = embeddings(_openai_embeddings(body), state.models), 0
        except ApiError as err:
            return ItemOutcome(item.custom_id, err.status, self.error_body(err))
        usage = answer["usage"]
        return ItemOutcome(item.custom_id, 200, answer, input_tokens=usage["prompt_tokens"], output_tokens=output)

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        now, written = state.clock.ts(), []
        corrupt = state.faults.malformed_output_line
        for ok, key, sample in ((True, "output_file", "batch_result"), (False, "error_file", "batch_error")):
            chosen = [o for o in outcomes if o.ok is ok]
            if chosen:
                stored = state.files.write_lines(
                    _lines(job, chosen, corrupt), filename=f"{job.id}_{sample}.jsonl", purpose="batch",
                    created_at=now, expires_at=None,
                )  # fmt: skip
                job.extra[key], job.extra[f"{key}_sample"], corrupt = stored.id, sample, False
                written.append(stored)
        job.extra["inline_only"] = state.faults.results_inline_only
        return written


def _openai_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body in the deterministic model's (OpenAI's) names."""
    renamed = {"random_seed": "seed"}
    return {renamed.get(k, k): v for k, v in body.items() if k not in ("safe_prompt", "prompt_mode", "prediction")}


def _openai_embeddings(body: Mapping[str, Any]) -> dict[str, Any]:
    return {("dimensions" if k == "output_dimension" else k): v for k, v in body.items() if k != "output_dtype"}


def _add_item(job: Job, raw: bytes, number: int, seen: set[str]) -> str | None:
    try:
        line = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return f"Line {number}: not valid JSON."
    if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
        return f"Line {number}: each line needs an object 'body'."
    custom_id = line.get("custom_id", str(number - 1))
    if not isinstance(custom_id, str) or custom_id in seen:
        return f"Line {number}: custom_id must be a unique string."
    model = line["body"].get("model")
    if model is not None and model != job.model:
        return f"Line {number}: body.model {model!r} differs from the job's model {job.model!r}."
    seen.add(custom_id)
    job.items.append(JobItem(custom_id, line["body"], number))
    return None


def _lines(job: Job, outcomes: Sequence[ItemOutcome], corrupt_first: bool) -> Iterator[bytes]:
    # Error-file lines are unverified upstream: the same envelope with the error's status and body.
    prefix = job.id.replace("-", "")[:8]
    for index, outcome in enumerate(outcomes):
        response = error = None
        if outcome.status_code is None:
            error = {"message": outcome.error_message, "code": outcome.error_code}
        else:
            response = {"status_code": outcome.status_code, "body": outcome.body}
        line_id = f"batch-{prefix}-{index}-{uuid.UUID(stable_id('', job.id, outcome.custom_id, length=32))}"
        line = {"id": line_id, "custom_id": outcome.custom_id, "response": response, "error": error}
        encoded = msgspec.json.encode(line)
        yield encoded[: len(encoded) // 2] if corrupt_first and index == 0 else encoded


# --- routes -----------------------------------------------------------------------------------------------


def file_object(stored: StoredFile) -> dict[str, Any]:
    sample = next((s for s in ("batch_result", "batch_error") if stored.filename.endswith(f"_{s}.jsonl")), None)
    return {
        "id": stored.id, "object": "file", "size_bytes": stored.bytes, "created_at": stored.created_at,
        "filename": stored.filename, "purpose": stored.purpose, "sample_type": sample or "batch_request",
        "num_lines": stored.lines, "mimetype": "application/jsonl", "source": "mistral" if sample else "upload",
        "signature": None, "expires_at": stored.expires_at, "visibility": "workspace",
    }  # fmt: skip


def job_object(job: Job, inline: bool = False, state: EmulatorState | None = None) -> dict[str, Any]:
    """The BatchJob; ``inline``: with ``outputs``, the lines of the output and error files."""
    files = [job.extra.get(key) for key in ("output_file", "error_file")]
    outputs = None
    if inline and state is not None and any(files):
        outputs = []
        for file_id in filter(None, files):
            with Path(state.files.get(file_id).path).open("rb") as lines:
                outputs += [msgspec.json.decode(raw) for raw in lines if raw.strip()]
        answered = next((item for item in outputs if (item.get("response") or {}).get("status_code") == 200), None)
        if state.faults.nested_output_line and answered is not None:  # a poison answer inside the one JSON answer
            answered["response"]["body"] = POISON_NESTING
    if job.extra.get("inline_only"):
        files = [None, None]
    # Job-level errors in Mistral's shape, whatever shape the shared job machinery recorded them in.
    errors = [{"message": str(e.get("message", "")), "count": e.get("count", 1)} for e in job.errors]
    return {
        "id": job.id, "object": "batch", "input_files": job.extra["input_files"], "metadata": job.metadata,
        "endpoint": job.endpoint, "model": job.model, "agent_id": None,
        "output_file": files[0], "error_file": files[1],
        "errors": errors, "outputs": outputs, "status": STATUS[job.status], "created_at": job.created_at,
        "started_at": job.times.get("in_progress_at"),
        "completed_at": next((job.times[k] for k in ("completed_at", "failed_at", "expired_at", "cancelled_at")
                              if k in job.times), None),
        "total_requests": job.total or len(job.items), "completed_requests": job.completed + job.failed,
        "succeeded_requests": job.completed, "failed_requests": job.failed,
    }  # fmt: skip


class _InlineRequest(msgspec.Struct, forbid_unknown_fields=True):
    body: dict[str, Any]
    custom_id: str | None = None


class _JobCreate(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str
    input_files: list[str] | None = None
    requests: list[_InlineRequest] | None = None
    model: str | None = None
    agent_id: str | None = None
    metadata: dict[str, str] | None = None
    timeout_hours: Annotated[int, msgspec.Meta(ge=1, le=167)] = 24


def _decode(raw: bytes) -> _JobCreate:
    try:
        return msgspec.json.decode(raw, type=_JobCreate)
    except msgspec.ValidationError as exc:
        text = str(exc)
        where = text.split("at `$.", 1)[1].split("`")[0] if "at `$." in text else text.partition("`")[2].split("`")[0]
        raise unprocessable(where or "body", text, "value_error") from None
    except msgspec.DecodeError:
        raise unprocessable("body", "JSON decode error", "json_invalid") from None


class FilesController(Controller):
    path = "/files"

    @post("/", status_code=200)
    async def upload(self, request: Req) -> dict[str, Any]:
        emu = emulator_of(request)
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise unprocessable("file", "Field required", "missing")
        try:
            if purpose not in ("batch", "fine-tune", "ocr"):
                raise unprocessable("purpose", "Input should be 'fine-tune', 'batch' or 'ocr'", "enum")
            stored = await emu.save_upload(request, upload, str(purpose), None)
        finally:
            await upload.close()
        return file_object(stored)

    @get("/")
    async def list_files(self, request: Req) -> dict[str, Any]:
        files = [file_object(f) for f in reversed(emulator_of(request).files.files.values())]
        return {"object": "list", "data": files, "total": len(files)}

    @get("/{file_id:str}")
    async def retrieve(self, request: Req) -> dict[str, Any]:
        return file_object(emulator_of(request).files.get(request.path_params["file_id"]))

    @get("/{file_id:str}/content")
    async def content(self, request: Req) -> File:
        stored = emulator_of(request).files.get(request.path_params["file_id"])
        return download(stored)

    @delete("/{file_id:str}", status_code=200)
    async def remove(self, request: Req) -> dict[str, Any]:
        deleted = emulator_of(request).files.delete(request.path_params["file_id"])
        return {"id": deleted.id, "object": "file", "deleted": True}


class JobsController(Controller):
    path = "/batch/jobs"

    @post("/", status_code=200)
    async def create(self, request: Req) -> dict[str, Any]:
        emu = emulator_of(request)
        spec = _decode(await request.body())
        # Both or neither of input_files and requests: the exact error is unverified upstream; a 400 says which.
        if (spec.input_files is None) == (spec.requests is None):
            raise ApiError(400, "Provide exactly one of 'input_files' and 'requests'.", param="input_files")
        if spec.endpoint not in (CHAT, EMBEDDINGS):
            raise ApiError(400, f"Endpoint {spec.endpoint!r} is not served here.", param="endpoint")
        if spec.model is None or spec.model not in emu.models:
            raise ApiError(400, f"Invalid model: {spec.model}", param="model")
        for file_id in spec.input_files or []:
            if file_id not in emu.files.files:
                raise not_found("file", file_id, param="input_files")
        if spec.requests is not None and not 0 < len(spec.requests) < INLINE_LIMIT:
            raise ApiError(400, f"Inline jobs take 1 to {INLINE_LIMIT - 1} requests.", param="requests")
        now = emu.clock.ts()
        extra: dict[str, Any] = {"input_files": spec.input_files or []}
        job = Job(str(uuid.uuid4()), spec.endpoint, now, now + spec.timeout_hours * 3600, spec.metadata, extra)
        job.model = spec.model
        seen: set[str] = set()
        for number, item in enumerate(spec.requests or [], 1):
            custom_id = item.custom_id if item.custom_id is not None else str(number - 1)
            if custom_id in seen:
                raise ApiError(400, f"Request {number}: custom_id {custom_id!r} is not unique.", param="requests")
            seen.add(custom_id)
            job.items.append(JobItem(custom_id, item.body, number))
        emu.launch(job)
        note(request, batch_id=job.id, metadata=spec.metadata, inline=spec.requests is not None)
        return job_object(job)

    @get("/")
    async def list_jobs(self, request: Req) -> dict[str, Any]:
        query = request.query_params
        page, size = _whole(query.get("page", "0"), "page", 0), _whole(query.get("page_size", "100"), "page_size", 1)
        jobs = list(emulator_of(request).jobs.values())
        if query.get("order_by", "-created") == "-created":
            jobs.reverse()
        if statuses := query.getall("status", []):
            jobs = [j for j in jobs if STATUS[j.status] in statuses]
        data = [job_object(j) for j in jobs[page * size : (page + 1) * size]]
        return {"object": "list", "data": data, "total": len(jobs)}

    @get("/{job_id:str}")
    async def retrieve(self, request: Req) -> dict[str, Any]:
        inline = request.query_params.get("inline") in ("true", "True", "1")
        return job_object(_job(request), inline, emulator_of(request))

    @post("/{job_id:str}/cancel", status_code=200)
    async def cancel(self, request: Req) -> dict[str, Any]:
        job = _job(request)
        # What a cancel of an ended job answers is unverified upstream: a 400 naming its status.
        if job.status not in ("validating", "in_progress", "finalizing", "cancelling"):  # finalizing shows RUNNING
            raise ApiError(400, f"Job {job.id} cannot be cancelled: it is {STATUS[job.status]}.")
        emulator_of(request).request_cancel(job)
        return job_object(job)

    @delete("/{job_id:str}", status_code=200)
    async def remove(self, request: Req) -> dict[str, Any]:
        job = _job(request)
        del emulator_of(request).jobs[job.id]
        return {"id": job.id, "object": "batch", "deleted": True}


def _whole(value: str, name: str, least: int) -> int:
    """A query parameter that must be a whole number of at least ``least`` (else FastAPI's 422)."""
    if not value.isdigit() or int(value) < least:
        raise unprocessable(name, f"Input should be a valid integer of at least {least}", "int_parsing")
    return int(value)


def _job(request: Req) -> Job:
    jobs, job_id = emulator_of(request).jobs, request.path_params["job_id"]
    if job_id not in jobs:
        raise not_found("batch job", job_id)
    return jobs[job_id]
