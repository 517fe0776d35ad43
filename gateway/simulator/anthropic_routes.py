"""The Anthropic Message Batches routes of an emulated provider, and the ``message_batch`` objects they answer.

``request_counts`` keep everything in ``processing`` until the batch ends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.response import Response

from gateway.simulator.anthropic_protocol import BATCHES, CUSTOM_ID, RETENTION_S, invalid
from gateway.simulator.file_store import download
from gateway.simulator.jobs import Job, JobItem
from gateway.simulator.model import random_id
from gateway.simulator.state import DAY_S, emulator_of, note

API_VERSION_HEADER = "anthropic-version"
STATUS_TABLE: dict[str, str] = {
    "validating": "in_progress", "in_progress": "in_progress", "finalizing": "in_progress",
    "cancelling": "canceling",
    "completed": "ended", "failed": "ended", "expired": "ended", "cancelled": "ended",
}  # fmt: skip
"""The machinery's job status -> ``processing_status``."""


def rfc3339(ts: int | None) -> str | None:
    """``2026-01-02T03:04:05Z`` for Unix seconds."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ended(job: Job) -> bool:
    return STATUS_TABLE[job.status] == "ended"


def request_counts(job: Job) -> dict[str, int]:
    """All ``processing`` until the batch ends, then the final split (which sums to the same total)."""
    zero = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if not _ended(job):
        return {**zero, "processing": len(job.items)}
    counts: dict[str, int] | None = job.extra.get("counts")
    return counts if counts is not None else {**zero, "errored": len(job.items)}


def batch_object(job: Job, base_url: str, now: float) -> dict[str, Any]:
    """The ``message_batch`` object; ``base_url`` is where this emulator is reached (for ``results_url``)."""
    status = STATUS_TABLE[job.status]
    ended_at = job.times.get(f"{job.status}_at") if status == "ended" else None
    archived = job.created_at + RETENTION_S
    return {
        "id": job.id, "type": "message_batch", "processing_status": status,
        "request_counts": request_counts(job), "ended_at": rfc3339(ended_at),
        "created_at": rfc3339(job.created_at), "expires_at": rfc3339(job.expires_at),
        "archived_at": rfc3339(archived) if now >= archived else None,
        "cancel_initiated_at": rfc3339(job.times.get("cancelling_at")),
        "results_url": f"{base_url}{BATCHES}/{job.id}/results" if status == "ended" else None,
    }  # fmt: skip


# --- routes --------------------------------------------------------------------------------------------

Req = Request[Any, Any, Any]


async def require_version(request: Req) -> None:
    """Refuse a call without the ``anthropic-version`` header, as the Messages API does."""
    if not request.headers.get(API_VERSION_HEADER):
        raise invalid(f"{API_VERSION_HEADER}: header is required")


def _base_url(request: Req) -> str:
    return str(request.base_url).rstrip("/")


def _job(request: Req) -> Job:
    jobs, batch_id = emulator_of(request).jobs, request.path_params["batch_id"]
    if batch_id not in jobs:
        raise invalid(f"No message batch found with id '{batch_id}'", 404, "not_found_error")
    return jobs[batch_id]


def _render(request: Req, job: Job) -> dict[str, Any]:
    return batch_object(job, _base_url(request), emulator_of(request).clock.now())


def _parse_requests(raw: bytes, max_requests: int) -> list[JobItem]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise invalid("The request body is not valid JSON.") from None
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list):
        raise invalid("requests: Field required")
    if not 1 <= len(requests) <= max_requests:
        raise invalid(f"requests: List should have between 1 and {max_requests} items, not {len(requests)}")
    items: list[JobItem] = []
    seen: set[str] = set()
    for index, entry in enumerate(requests):
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise invalid(f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom_id in seen:
            raise invalid(f"requests.{index}.custom_id: custom_id '{custom_id}' is not unique within the batch")
        if not isinstance(entry.get("params"), dict):
            raise invalid(f"requests.{index}.params: Input should be a valid dictionary")
        seen.add(custom_id)
        items.append(JobItem(custom_id, entry["params"], index + 1))
    return items


def _page(request: Req, jobs: list[Job]) -> dict[str, Any]:
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise invalid("limit: Input should be an integer between 1 and 1000")
    limit, ids = int(raw_limit), [job.id for job in jobs]
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    if before is not None:
        end = ids.index(before) if before in ids else 0
        start = max(0, end - limit)
        chosen, has_more = jobs[start:end], start > 0
    else:
        start = 0 if after is None else ids.index(after) + 1 if after in ids else len(ids)
        chosen, has_more = jobs[start : start + limit], start + limit < len(ids)
    data = [_render(request, job) for job in chosen]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"data": data, "has_more": has_more, "first_id": first, "last_id": last}


class MessageBatchesController(Controller):
    path = "/"

    @post("/", status_code=200)
    async def create(self, request: Req) -> dict[str, Any]:
        emu = emulator_of(request)
        items = _parse_requests(await request.body(), emu.max_lines)
        now = emu.clock.ts()
        job = Job(random_id("msgbatch_", 24), "/v1/messages", now, now + DAY_S, items=items, total=len(items))
        emu.launch(job)
        note(request, batch_id=job.id, requests=len(items))
        return _render(request, job)

    @get("/")
    async def list_batches(self, request: Req) -> dict[str, Any]:
        return _page(request, list(reversed(emulator_of(request).jobs.values())))

    @get("/{batch_id:str}")
    async def retrieve(self, request: Req) -> dict[str, Any]:
        return _render(request, _job(request))

    @post("/{batch_id:str}/cancel", status_code=200)
    async def cancel(self, request: Req) -> dict[str, Any]:
        job = _job(request)
        if _ended(job):
            raise invalid(f"Message batch '{job.id}' has already ended and cannot be canceled")
        emulator_of(request).request_cancel(job)
        return _render(request, job)

    @delete("/{batch_id:str}", status_code=200)
    async def remove(self, request: Req) -> dict[str, Any]:
        job, emu = _job(request), emulator_of(request)
        if not _ended(job):
            raise invalid(f"Message batch '{job.id}' is still processing; cancel it before deleting it")
        emu.jobs.pop(job.id)
        if job.extra.get("results_file_id") in emu.files.files:
            emu.files.delete(job.extra["results_file_id"])
        return {"id": job.id, "type": "message_batch_deleted"}

    @get("/{batch_id:str}/results")
    async def results(self, request: Req) -> Response[Any]:
        job, emu = _job(request), emulator_of(request)
        if not _ended(job):
            raise invalid(f"Message batch '{job.id}' has not ended yet; results are not available")
        if emu.clock.now() >= job.created_at + RETENTION_S:
            raise invalid(f"The results of message batch '{job.id}' are no longer available", 404, "not_found_error")
        stored = emu.files.files.get(job.extra.get("results_file_id", ""))
        if stored is None:
            return Response(b"", media_type="application/x-jsonl")
        return download(stored, "application/x-jsonl")
