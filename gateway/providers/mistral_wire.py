"""Pure transforms of Mistral's batch API (no I/O, no network): job statuses and counts, shard lines.

Result lines are OpenAI's output envelope without ``request_id``, so
:func:`gateway.providers.openai_wire.normalise_output_line` reads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.providers.base import PollResult, ProviderBatchState
from gateway.providers.jsonl import encode_line, iter_requests
from gateway.translate import TranslationError
from gateway.translate.mistral import to_mistral

JOB_STATUS: dict[str, ProviderBatchState] = {
    "QUEUED": ProviderBatchState.QUEUED,
    "RUNNING": ProviderBatchState.RUNNING,
    "SUCCESS": ProviderBatchState.COMPLETED,
    "FAILED": ProviderBatchState.FAILED,
    # The official example polls only for SUCCESS, FAILED and CANCELLED and would spin on this one.
    "TIMEOUT_EXCEEDED": ProviderBatchState.EXPIRED,
    "CANCELLATION_REQUESTED": ProviderBatchState.CANCELLING,
    "CANCELLED": ProviderBatchState.CANCELLED,
}
"""Mistral job status -> gateway state."""
MAX_TIMEOUT_HOURS = 167
"""``timeout_hours`` "should be lower than 7 days"."""
INLINE_LIMIT = 10_000
"""Inline ``requests`` are for jobs of fewer than this many requests."""


@dataclass(frozen=True)
class JobCounts:
    """A job's request counts in OpenAI's sense: ``completed`` is the succeeded ones."""

    total: int = 0
    completed: int = 0
    failed: int = 0


def _count(job: Mapping[str, Any], key: str) -> int:
    value = job.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def job_counts(job: Mapping[str, Any]) -> JobCounts:
    """Read ``total_requests``, ``succeeded_requests`` and ``failed_requests``; absent ones count as zero."""
    return JobCounts(_count(job, "total_requests"), _count(job, "succeeded_requests"), _count(job, "failed_requests"))


def parse_job(job: Mapping[str, Any]) -> tuple[PollResult, bool]:
    """The poll result of a job object, and whether its status is one this table knows (unknown: running)."""
    raw_status = job.get("status")
    state = JOB_STATUS.get(raw_status) if isinstance(raw_status, str) else None
    counts = job_counts(job)
    failed = state is ProviderBatchState.FAILED
    result = PollResult(
        state=state or ProviderBatchState.RUNNING,
        raw_status=str(raw_status),
        total=counts.total,
        completed=counts.completed,
        failed=counts.failed,
        error=job_error_summary(job) if failed else None,
    )
    return result, state is not None


def job_error_summary(job: Mapping[str, Any], *, limit: int = 3) -> str | None:
    """A short text of a job's ``errors`` (``[{message, count}]``)."""
    errors = job.get("errors")
    entries = [e for e in errors if isinstance(e, Mapping) and e.get("message")] if isinstance(errors, list) else []
    parts = [
        f"{e['message']} (x{e['count']})" if isinstance(e.get("count"), int) and e["count"] > 1 else str(e["message"])
        for e in entries[:limit]
    ]
    if len(entries) > limit:
        parts.append(f"and {len(entries) - limit} more")
    return "; ".join(parts) or None


def timeout_hours(window_s: float) -> int:
    """Whole hours of what is left of the client's window, from 1 to :data:`MAX_TIMEOUT_HOURS`."""
    return max(1, min(MAX_TIMEOUT_HOURS, int(window_s // 3600)))


@dataclass
class MistralShard:
    """A shard as Mistral lines: the ids sent (in order), the requests left out and why, the bytes written."""

    sent: list[str] = field(default_factory=list)
    rejected: list[tuple[str, TranslationError]] = field(default_factory=list)
    size: int = 0


def translate_shard(input_path: Path, endpoint: str, dest: Path | None = None) -> MistralShard:
    """Translate a shard's OpenAI lines into Mistral's ``{"custom_id", "body"}`` lines (written to ``dest``)."""
    shard = MistralShard()
    with dest.open("wb") if dest else contextlib.nullcontext() as out:
        for _, custom_id, request in iter_requests(input_path):
            try:
                if isinstance(request, TranslationError):
                    raise request
                body = to_mistral(endpoint, request)
            except TranslationError as exc:
                shard.rejected.append((custom_id, exc))
                continue
            shard.sent.append(custom_id)
            if out is not None:
                encoded = encode_line({"custom_id": custom_id, "body": body})
                out.write(encoded)
                shard.size += len(encoded)
    return shard


def read_requests(path: Path) -> list[Any]:
    """The translated lines of a small shard, for an inline create body."""
    with path.open("rb") as lines:
        return [msgspec.json.decode(raw) for raw in lines if raw.strip()]
