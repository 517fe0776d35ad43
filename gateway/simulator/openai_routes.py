"""The OpenAI Files and Batches routes of an emulated provider, and the objects they answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import UploadFile
from litestar.response import File

from gateway.simulator.errors import ApiError, not_found
from gateway.simulator.file_store import StoredFile, download
from gateway.simulator.jobs import Job
from gateway.simulator.openai_dialects import DIALECTS, WireDialect, together_job
from gateway.simulator.openai_protocol import FILE_TTL_S, TTL_MAX_S, TTL_MIN_S, invalid
from gateway.simulator.state import emulator_of, note


def dialect_of(request: Request[Any, Any, Any]) -> WireDialect:
    """The OpenAI dialect the provider serving ``request`` speaks."""
    return DIALECTS[emulator_of(request).spec.dialect]


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id, "object": "file", "bytes": stored.bytes, "created_at": stored.created_at,
        "expires_at": stored.expires_at, "filename": stored.filename, "purpose": stored.purpose,
        "status": "processed", "status_details": None,
    }  # fmt: skip


def batch_object(job: Job, dialect: WireDialect = DIALECTS["openai"]) -> dict[str, Any]:
    """The batch as the dialect shows it (Together's job object for Together)."""
    times, extra = job.times, job.extra
    if dialect.together_jobs:
        return together_job(job, dialect, extra.get("input_bytes", 0))
    stamps = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
    batch = {
        "id": job.id, "object": "batch", "endpoint": job.endpoint, "model": job.model,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "input_file_id": extra["input_file_id"], "completion_window": extra["completion_window"],
        "status": dialect.status(job.status), "output_file_id": extra.get("output_file_id"),
        "error_file_id": extra.get("error_file_id"), "created_at": dialect.time(job.created_at),
        "expires_at": dialect.time(job.expires_at),
        **{f"{name}_at": dialect.time(times.get(f"{name}_at")) for name in stamps},
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "usage": {
            "input_tokens": job.input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": job.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": job.input_tokens + job.output_tokens,
        },
        "metadata": job.metadata,
    }  # fmt: skip
    return {k: v for k, v in batch.items() if k not in dialect.batch_fields_left_out}


def list_page(objects: Sequence[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """The cursor page after the object with id ``after`` (an unknown cursor gives an empty page)."""
    ids = [o["id"] for o in objects]
    start = 0 if after is None else ids.index(after) + 1 if after in ids else len(ids)
    data = list(objects[start : start + limit])
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    has_more = start + limit < len(ids)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}


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
        raise invalid(name, f"'{name}' must be an integer between 1 and {highest}.")
    return int(raw)


class FilesController(Controller):
    path = "/files"

    @post("/", status_code=200)
    async def upload(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        emu = emulator_of(request)
        form = await request.form()
        upload, purpose, ttl = form.get("file"), form.get("purpose"), form.get("expires_after[seconds]")
        if not isinstance(upload, UploadFile):
            raise invalid("file", "Missing required parameter: 'file'.", "missing_required_parameter")
        try:
            purposes = dialect_of(request).purposes
            if purpose not in purposes:
                accepted = ", ".join(repr(p) for p in sorted(purposes))
                raise invalid("purpose", f"Invalid purpose {purpose!r}: this provider only accepts {accepted}.")
            if not upload.filename.endswith(".jsonl"):
                raise invalid("file", "Invalid file format for Batch API. Must be .jsonl", "invalid_file_format")
            if ttl is not None and (not str(ttl).isdigit() or not TTL_MIN_S <= int(ttl) <= TTL_MAX_S):
                raise invalid("expires_after.seconds", f"Must be between {TTL_MIN_S} and {TTL_MAX_S}.")
            expires = emu.clock.ts() + (int(ttl) if ttl is not None else FILE_TTL_S)
            cap = dialect_of(request).max_upload_bytes
            stored = await emu.save_upload(request, upload, str(purpose), expires, cap)
        finally:
            await upload.close()
        return file_object(stored)

    @get("/")
    async def list_files(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        query = request.query_params
        order, purpose = query.get("order", "desc"), query.get("purpose")
        limit = _query_int(request, "limit", 10_000, 10_000)
        if order not in ("asc", "desc"):
            raise invalid("order", "'order' must be 'asc' or 'desc'.")
        files = [file_object(f) for f in emulator_of(request).files.files.values() if purpose in (None, f.purpose)]
        return list_page(files[::-1] if order == "desc" else files, query.get("after"), limit)

    @get("/{file_id:str}")
    async def retrieve(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        return file_object(emulator_of(request).files.get(request.path_params["file_id"]))

    @get("/{file_id:str}/content")
    async def content(self, request: Request[Any, Any, Any]) -> File:
        stored = emulator_of(request).files.get(request.path_params["file_id"])
        return download(stored)

    @delete("/{file_id:str}", status_code=200)
    async def remove(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        deleted = emulator_of(request).files.delete(request.path_params["file_id"])
        return {"id": deleted.id, "object": "file", "deleted": True}


class BatchesController(Controller):
    path = "/batches"

    @post("/", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        emu, dialect = emulator_of(request), dialect_of(request)
        spec = _decode_create(await request.body())
        if spec.endpoint not in dialect.endpoints:
            served = ", ".join(dialect.endpoints)
            raise invalid("endpoint", f"Invalid endpoint {spec.endpoint!r}: this provider serves {served}.")
        hours = dialect.window_hours(spec.completion_window)
        if hours is None:
            raise invalid("completion_window", f"Invalid completion_window: {dialect.window_rule()}.")
        stored = emu.files.files.get(spec.input_file_id)
        if stored is None:
            raise not_found("File", spec.input_file_id, param="input_file_id")
        if stored.purpose not in dialect.purposes:
            raise invalid("input_file_id", f"The input file must have purpose {'/'.join(sorted(dialect.purposes))}.")
        now = emu.clock.ts()
        extra: dict[str, Any] = {
            "input_file_id": stored.id, "completion_window": spec.completion_window, "input_bytes": stored.bytes,
        }  # fmt: skip
        if spec.output_expires_after is not None:
            extra["output_ttl_s"] = spec.output_expires_after.seconds
        metadata = spec.metadata if dialect.keeps_metadata else None
        job = Job(dialect.new_batch_id(), spec.endpoint, now, now + hours * 3600, metadata, extra)
        emu.launch(job)
        note(request, batch_id=job.id, metadata=spec.metadata, input_lines=stored.lines)
        created = batch_object(job, dialect)
        return {"job": created} if dialect.together_jobs else created

    @get("/")
    async def list_batches(self, request: Request[Any, Any, Any]) -> Any:
        dialect = dialect_of(request)
        jobs = [batch_object(j, dialect) for j in reversed(emulator_of(request).jobs.values())]
        if dialect.together_jobs:  # Together answers the whole list as a bare array, without paging
            return jobs
        return list_page(jobs, request.query_params.get("after"), _query_int(request, "limit", 20, 100))

    @get("/{batch_id:str}")
    async def retrieve(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        return batch_object(_job(request), dialect_of(request))

    @post("/{batch_id:str}/cancel", status_code=200)
    async def cancel(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        job = _job(request)
        # Which states accept a cancel is unverified upstream: repeats are harmless, finished ones get 409.
        if job.status not in ("validating", "in_progress", "cancelling"):
            raise ApiError(409, f"Cannot cancel a batch with status '{dialect_of(request).status(job.status)}'.")
        emulator_of(request).request_cancel(job)
        return batch_object(job, dialect_of(request))


def _job(request: Request[Any, Any, Any]) -> Job:
    jobs, batch_id = emulator_of(request).jobs, request.path_params["batch_id"]
    if batch_id not in jobs:
        raise not_found("Batch", batch_id)
    return jobs[batch_id]
