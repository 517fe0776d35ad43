"""Pure transforms of the OpenAI Files + Batches wire format (no I/O, no network).

Shared by :mod:`gateway.providers.openai_batch` and its tests. Covers the dialects of the
OpenAI-compatible providers: OpenAI, Azure OpenAI (capitalised statuses), Groq and Together
(UPPERCASE statuses, create answer wrapped in ``{"job": ...}``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.providers.base import ProviderBatchState
from gateway.translate import MalformedResult

SUBMIT_TOKEN_KEY = "batchgw_submit_token"
SHARD_ID_KEY = "batchgw_shard_id"

BATCH_STATUS_TABLE: dict[str, ProviderBatchState] = {
    "validating": ProviderBatchState.QUEUED,
    "queued": ProviderBatchState.QUEUED,
    "in_progress": ProviderBatchState.RUNNING,
    "finalizing": ProviderBatchState.RUNNING,
    "cancelling": ProviderBatchState.CANCELLING,
    "canceling": ProviderBatchState.CANCELLING,
    "completed": ProviderBatchState.COMPLETED,
    "failed": ProviderBatchState.FAILED,
    "expired": ProviderBatchState.EXPIRED,
    "cancelled": ProviderBatchState.CANCELLED,
    "canceled": ProviderBatchState.CANCELLED,
}
"""Provider status -> gateway state. Looked up after :func:`_status_key` folding."""


def _status_key(status: str) -> str:
    # Folds "in_progress", "IN_PROGRESS", "InProgress" and "in-progress" onto one key.
    return "".join(ch for ch in status.lower() if ch.isalnum())


_STATUS_LOOKUP = {_status_key(name): state for name, state in BATCH_STATUS_TABLE.items()}


def map_batch_status(status: object) -> ProviderBatchState | None:
    """The gateway state for a provider status string, or ``None`` if the status is unknown."""
    if not isinstance(status, str):
        return None
    return _STATUS_LOOKUP.get(_status_key(status))


def cancel_refusal_is_benign(status: object) -> bool:
    """True if a refused cancel leaves nothing to stop: the batch ended, is cancelling or is finalizing."""
    state = map_batch_status(status)
    if state is None:
        return False
    finalizing = isinstance(status, str) and _status_key(status) == "finalizing"
    return state.is_terminal or state is ProviderBatchState.CANCELLING or finalizing


@dataclass(frozen=True)
class RequestCounts:
    """``request_counts`` of a batch object; absent or malformed fields count as zero."""

    total: int = 0
    completed: int = 0
    failed: int = 0


def _count(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0


def parse_request_counts(batch: Mapping[str, Any]) -> RequestCounts:
    """Read ``request_counts`` from a batch object, tolerating a missing or partial object."""
    counts = batch.get("request_counts")
    if not isinstance(counts, Mapping):
        return RequestCounts()
    return RequestCounts(
        total=_count(counts.get("total")),
        completed=_count(counts.get("completed")),
        failed=_count(counts.get("failed")),
    )


def batch_error_summary(batch: Mapping[str, Any], *, limit: int = 3) -> str | None:
    """A short text of a batch's ``errors.data`` (code, message, line), or Together's ``error`` string."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, Mapping) else errors
    parts: list[str] = []
    entries = [entry for entry in data if isinstance(entry, Mapping)] if isinstance(data, list) else []
    for entry in entries[:limit]:
        code = entry.get("code")
        message = entry.get("message")
        text = ": ".join(str(part) for part in (code, message) if part not in (None, ""))
        line = entry.get("line")
        if isinstance(line, int) and not isinstance(line, bool):
            text = f"{text} (line {line})" if text else f"line {line}"
        if text:
            parts.append(text)
    if len(entries) > limit:
        parts.append(f"and {len(entries) - limit} more")
    if not parts:
        single = batch.get("error")
        if isinstance(single, str) and single:
            return single
        if isinstance(single, Mapping) and single.get("message"):
            return str(single["message"])
        return None
    return "; ".join(parts)


def unwrap_batch(obj: object) -> dict[str, Any]:
    """The batch object of a create/retrieve/cancel answer (Together wraps it as ``{"job": ...}``)."""
    if isinstance(obj, dict):
        job = obj.get("job")
        if "id" not in obj and isinstance(job, dict):
            return job
        return obj
    raise ValueError("batch answer is not a JSON object")


@dataclass(frozen=True)
class BatchPage:
    """One page of ``GET /batches``."""

    batches: list[dict[str, Any]]
    has_more: bool
    last_id: str | None


def parse_batch_page(obj: object) -> BatchPage:
    """Read a list envelope ``{"data": [...], "has_more", "last_id"}``; a bare JSON array is one page."""
    if isinstance(obj, list):
        return BatchPage([item for item in obj if isinstance(item, dict)], False, None)
    if not isinstance(obj, dict):
        return BatchPage([], False, None)
    data = obj.get("data")
    batches = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    last_id = obj.get("last_id")
    if not isinstance(last_id, str) or not last_id:
        last = batches[-1].get("id") if batches else None
        last_id = last if isinstance(last, str) else None
    return BatchPage(batches, obj.get("has_more") is True, last_id)


def submit_metadata(submit_token: str, shard_id: str) -> dict[str, str]:
    """The tag stored on every provider batch the gateway creates."""
    return {SUBMIT_TOKEN_KEY: submit_token, SHARD_ID_KEY: shard_id}


def has_submit_token(batch: Mapping[str, Any], submit_token: str) -> bool:
    """True if the batch object carries the gateway's tag with this token."""
    metadata = batch.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get(SUBMIT_TOKEN_KEY) == submit_token


def find_batch_with_token(batches: list[dict[str, Any]], submit_token: str) -> dict[str, Any] | None:
    """The first batch in the list tagged with ``submit_token``."""
    return next((batch for batch in batches if has_submit_token(batch, submit_token)), None)


def _line_id(provider_batch_id: str, custom_id: str) -> str:
    digest = hashlib.sha256(f"{provider_batch_id}\x00{custom_id}".encode()).hexdigest()[:24]
    return f"batch_req_{digest}"


def _normalise_error(error: object) -> dict[str, Any] | None:
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return {
            "code": code if isinstance(code, str) or code is None else str(code),
            "message": message if isinstance(message, str) else str(message or ""),
        }
    if isinstance(error, str) and error:
        return {"code": None, "message": error}
    return None


def normalise_output_line(raw: bytes, provider_batch_id: str) -> dict[str, Any]:
    """Turn one provider result line into the OpenAI envelope ``{id, custom_id, response, error}``.

    Raises :class:`MalformedResult` if the line is not a JSON object with a string ``custom_id``.
    A line with neither a response object nor an error gets an ``invalid_provider_output`` error,
    so the request shows up as failed rather than silently succeeded.
    """
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise MalformedResult("not valid JSON") from None
    if not isinstance(obj, dict):
        raise MalformedResult("not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise MalformedResult("no string custom_id")
    line_id = obj.get("id")
    response = obj.get("response")
    error = _normalise_error(obj.get("error"))
    if not isinstance(response, dict):
        response = None
    if response is None and error is None:
        error = {"code": "invalid_provider_output", "message": "The provider returned no result."}
    return {
        "id": line_id if isinstance(line_id, str) and line_id else _line_id(provider_batch_id, custom_id),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }


def sync_output_line(
    custom_id: str, status: int, body: bytes, request_id: str | None, clean: Callable[[str], str]
) -> bytes:
    """The output line (without newline) of one synchronous answer, as a provider batch would have written it.

    The message of an error answer goes through ``clean`` (it reaches the client); a body that is not
    a JSON object becomes a ``server_error``.
    """
    try:
        decoded: Any = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        text = clean(body[:500].decode("utf-8", "replace"))
        decoded = {"error": {"message": f"HTTP {status}: {text}", "type": "server_error", "param": None, "code": None}}
    elif not 200 <= status < 300:
        decoded = _clean_error_body(decoded, clean)
    envelope = {
        "id": "",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id or "", "body": decoded},
        "error": None,
    }
    return msgspec.json.encode(envelope)


def _clean_error_body(body: dict[str, Any], clean: Callable[[str], str]) -> dict[str, Any]:
    """The error body with its human text (``error.message``, or a string ``error``/``message``/``detail``) cleaned."""
    cleaned = {key: clean(value) if key in ("error", "message", "detail") and isinstance(value, str) else value
               for key, value in body.items()}  # fmt: skip
    error = cleaned.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        cleaned["error"] = {**error, "message": clean(error["message"])}
    return cleaned
