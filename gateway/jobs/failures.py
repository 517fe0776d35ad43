"""How the worker treats a stage that raised: heal by retrying, or end the work with a clear error.

Errors that no retry can heal (a blob that is gone, input too deeply nested to decode, data that is
not what the stage wrote) end the batch or shard at once; anything else is retried with exponential
backoff (``worker.stage_retry_base_s`` doubling up to ``worker.stage_retry_max_s``) until
``worker.stage_max_attempts`` attempts failed. Every attempt is kept on the row (time, step, error
class, message) for the admin API and the dashboard.
"""

from __future__ import annotations

import random
import time

import msgspec

from gateway.storage import BlobMissing

PERMANENT: dict[type[BaseException], str] = {
    BlobMissing: "content_missing",
    FileNotFoundError: "content_missing",
    RecursionError: "nesting_too_deep",
    msgspec.DecodeError: "invalid_data",
    msgspec.ValidationError: "invalid_data",
    UnicodeDecodeError: "invalid_data",
}
"""Exceptions a retry cannot heal, and the error code they end the work with."""

MESSAGE_LIMIT = 500


def cannot_heal(error: BaseException) -> bool:
    """True for errors no retry can fix."""
    return isinstance(error, tuple(PERMANENT))


def describe(error: BaseException) -> tuple[str, str]:
    """The error code and a one-line message for a failed attempt (no traceback, bounded length)."""
    code = next((code for kind, code in PERMANENT.items() if isinstance(error, kind)), "stage_failed")
    if isinstance(error, BlobMissing):
        text = f"stored content {error.key!r} is missing"
    elif isinstance(error, RecursionError):
        text = "data nested too deeply to process"
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return code, " ".join(text.split())[:MESSAGE_LIMIT]


def attempt_entry(step: str, error: BaseException) -> dict[str, object]:
    """One row of an attempt history."""
    code, message = describe(error)
    return {"at": round(time.time(), 3), "step": step, "error": type(error).__name__, "code": code, "message": message}


def retry_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with jitter, capped."""
    return min(max_s, base_s * 2.0 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)
