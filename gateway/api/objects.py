"""Rendering of stored rows as OpenAI API objects (every field the official SDK defines)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.db.message_batches import public_id
from gateway.db.models import Batch, MessageBatch, StoredFile


def file_object(row: StoredFile) -> dict[str, Any]:
    """A File object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": row.status_details,
    }


def batch_object(row: Batch, waiting: tuple[str, str] | None = None) -> dict[str, Any]:
    """A Batch object; ``waiting`` (code, sentence) says why an unfinished batch is not done yet."""
    errors = {"object": "list", "data": row.errors} if row.errors else None
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": row.created_at,
        "in_progress_at": row.in_progress_at,
        "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at,
        "completed_at": row.completed_at,
        "failed_at": row.failed_at,
        "expired_at": row.expired_at,
        "cancelling_at": row.cancelling_at,
        "cancelled_at": row.cancelled_at,
        "request_counts": {
            "total": row.request_total,
            "completed": row.request_completed,
            "failed": row.request_failed,
        },
        "usage": {
            "input_tokens": row.input_tokens,
            "input_tokens_details": {"cached_tokens": row.cached_tokens},
            "output_tokens": row.output_tokens,
            "output_tokens_details": {"reasoning_tokens": row.reasoning_tokens},
            "total_tokens": row.input_tokens + row.output_tokens,
        },
        "metadata": _metadata(row, waiting),
    }


def _metadata(row: Batch, waiting: tuple[str, str] | None) -> dict[str, str] | None:
    """The client's metadata plus, once routed, where the batch ran and what it cost, and, while it waits,
    why (``gateway_waiting``).

    The gateway's keys are strings, as OpenAI's metadata values are, so the official SDKs parse them.
    """
    gateway: dict[str, str] = {}
    if row.policy is not None:
        gateway = {
            "gateway_policy": row.policy,
            "gateway_providers": row.providers or "",
            "gateway_estimated_cost_usd": f"{row.estimated_cost_usd or 0.0:.6f}",
            "gateway_cost_usd": f"{row.cost_usd:.6f}",
            "gateway_savings_usd": f"{row.list_cost_usd - row.cost_usd:.6f}",
        }
        if row.abandoned_cost_usd:
            gateway["gateway_paid_twice_usd"] = f"{row.abandoned_cost_usd:.6f}"
    if waiting is not None:
        gateway["gateway_waiting"] = waiting[1]
    if not gateway:
        return row.metadata_
    return {**(row.metadata_ or {}), **gateway}


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor-page envelope."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def rfc3339(timestamp: float | None) -> str | None:
    """An RFC 3339 UTC time (Anthropic's timestamps), or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def message_batch_object(
    message: MessageBatch, batch: Batch, counts: dict[str, int] | None, results_url: str
) -> dict[str, Any]:
    """An Anthropic MessageBatch object; ``counts`` are the final counts once it ended (None before)."""
    ended_at = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at
    if counts is not None:
        status = "ended"
    else:
        status = "canceling" if batch.status == "cancelling" else "in_progress"
        counts = {"processing": message.request_count, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    return {
        "id": public_id(batch.id),
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": rfc3339(ended_at) if status == "ended" else None,
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.expires_at),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(batch.cancelling_at),
        "results_url": results_url if status == "ended" else None,
    }


def message_batch_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """Anthropic's list envelope."""
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
