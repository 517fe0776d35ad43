"""Small formatting helpers shared by the pages (pure functions, no I/O)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

MISSING = "—"
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})
HEALTHY_WAITS = frozenset({"provider_turnaround", "working", "intake", "merging", "scheduled", "queued_capacity"})
"""Waiting codes of a job that is progressing normally; any other one is shown as a problem."""
CIRCUIT_LABEL = {"closed": "closed (healthy)", "half_open": "half-open (probing)", "open": "OPEN (avoided)"}


def money(value: Any, digits: int = 4) -> str:
    """``$0.0123`` (``-$0.0060`` below zero), with enough decimals to show two significant digits of a tiny amount;
    missing: a dash."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return MISSING
    if value and abs(value) < 10**-digits:
        digits = min(10, 1 - math.floor(math.log10(abs(value))))
    sign = "-" if value < 0 and round(value, digits) != 0 else ""
    return f"{sign}${abs(value):,.{digits}f}"


def duration(seconds: Any) -> str:
    """``42s``, ``3m 20s``, ``2h 05m``; a missing value is a dash."""
    if seconds is None or not isinstance(seconds, int | float):
        return MISSING
    total = round(seconds)
    if total < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(timestamp: Any) -> str:
    """A Unix time as ``2026-11-24 13:05:09`` UTC; a missing value is a dash."""
    if timestamp is None or not isinstance(timestamp, int | float):
        return MISSING
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_label(status: str | None) -> str:
    """A batch status for display (plain text: tables and metrics cannot show icon fonts)."""
    return (status or MISSING).replace("_", " ")


def percent(value: Any) -> str:
    """A 0..1 fraction as ``42%``."""
    if value is None or not isinstance(value, int | float):
        return MISSING
    return f"{value * 100:.0f}%"


def counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    """(completed, failed, total) of a batch object."""
    rc = batch.get("request_counts") or {}
    return int(rc.get("completed") or 0), int(rc.get("failed") or 0), int(rc.get("total") or 0)


def progress(batch: dict[str, Any]) -> float:
    """Fraction of the batch's requests that have an answer (0..1)."""
    completed, failed, total = counts(batch)
    if total <= 0:
        return 1.0 if batch.get("status") in FINISHED else 0.0
    return min(1.0, (completed + failed) / total)


def joined(values: Any) -> str:
    """A list as ``a, b``; a scalar as text; nothing as a dash."""
    if values is None or values == []:
        return MISSING
    if isinstance(values, list | tuple):
        return ", ".join(str(v) for v in values)
    return str(values)


def waiting_label(batch: dict[str, Any]) -> str:
    """Why a running job waits, marked when it is a problem (empty for finished jobs)."""
    waiting = batch.get("waiting") or {}
    if batch.get("status") not in RUNNING or not waiting.get("detail"):
        return ""
    marker = "" if waiting.get("code") in HEALTHY_WAITS else "⚠ "
    return f"{marker}{waiting['detail']}"
