"""The dialects of the OpenAI batch protocol an emulated provider can speak, as data the routes read.

``dialect`` of a provider spec picks one: OpenAI's own, Azure OpenAI (``api-key`` header, capitalised
statuses and ISO timestamps as in its older REST examples, an error file even when nothing failed),
Groq (windows from 24h to 7d, chat only) or Together (purpose ``batch-api``, the create answer wrapped as
``{"job": ...}``, its own job object with UPPERCASE statuses and no ``metadata``, lines without
``method``/``url``). Facts from the providers' documentation; where it is silent, the comment says what
was chosen.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.simulator.jobs import Job
from gateway.simulator.model import random_id

DialectName = Literal["openai", "azure", "groq", "together"]
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_WINDOW = re.compile(r"^([1-9][0-9]{0,3})([hd])$")

AZURE_STATUS = {
    "validating": "Validating", "in_progress": "InProgress", "finalizing": "Finalizing", "completed": "Completed",
    "failed": "Failed", "expired": "Expired", "cancelling": "Cancelling", "cancelled": "Cancelled",
}  # fmt: skip
TOGETHER_STATUS = {
    "validating": "VALIDATING", "in_progress": "IN_PROGRESS", "finalizing": "IN_PROGRESS", "completed": "COMPLETED",
    "failed": "FAILED", "expired": "EXPIRED", "cancelling": "CANCELING", "cancelled": "CANCELLED",
}  # fmt: skip
"""Together has no ``finalizing``: its job stays ``IN_PROGRESS`` until the output is written."""


@dataclass(frozen=True)
class WireDialect:
    """How one OpenAI-protocol provider's Files and Batches API departs from OpenAI's."""

    base_path: str = "/v1"
    purposes: frozenset[str] = frozenset({"batch"})
    """Upload purposes accepted for batch input."""
    key_header: str | None = None
    """Header carrying the bare key; ``None``: ``Authorization: Bearer``."""
    longest_window_h: int = 24
    """24: only ``"24h"``; more: durations ``<n>h`` or ``<n>d`` from 24 hours up to this."""
    endpoints: tuple[str, ...] = (CHAT, EMBEDDINGS)
    status_names: Mapping[str, str] = field(default_factory=dict)
    """OpenAI status -> this dialect's spelling (empty: OpenAI's own)."""
    iso_times: bool = False
    always_error_file: bool = False
    together_jobs: bool = False
    """Together's job object, its ``{"job": ...}`` create answer and its bare-array list."""
    keeps_metadata: bool = True
    lines_need_method_url: bool = True
    max_upload_bytes: int | None = None
    """The provider's own cap on one batch file (Groq's and Together's 100 MB), below the emulator's."""
    batch_fields_left_out: frozenset[str] = frozenset()
    """OpenAI batch-object fields this provider's object does not have (Groq's: no ``model``, no ``usage``)."""
    max_custom_id: int | None = None

    def window_hours(self, value: str) -> int | None:
        """The hours of a completion window this dialect accepts, or None."""
        if self.longest_window_h == 24:
            return 24 if value == "24h" else None
        match = _WINDOW.match(value)
        if match is None:
            return None
        hours = int(match.group(1)) * (24 if match.group(2) == "d" else 1)
        return hours if 24 <= hours <= self.longest_window_h else None

    def window_rule(self) -> str:
        """The accepted windows in words, for an error message."""
        if self.longest_window_h == 24:
            return "only '24h' is supported"
        return f"durations from '24h' to '{self.longest_window_h // 24}d' are supported"

    def status(self, status: str) -> str:
        """A job status in this dialect's spelling."""
        return self.status_names.get(status, status)

    def time(self, ts: int | None) -> int | str | None:
        """A timestamp as this dialect writes it."""
        if ts is None or not self.iso_times:
            return ts
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

    def new_batch_id(self) -> str:
        """Together's job ids are UUIDs; the others are ``batch_`` plus hex."""
        return str(uuid.uuid4()) if self.together_jobs else random_id("batch_", 32)


DIALECTS: dict[str, WireDialect] = {
    "openai": WireDialect(),
    # The bearer form works for Entra tokens only; an API key goes in ``api-key``.
    "azure": WireDialect(
        base_path="/openai/v1", key_header="api-key", status_names=AZURE_STATUS, iso_times=True, always_error_file=True
    ),
    "groq": WireDialect(
        base_path="/openai/v1",
        longest_window_h=7 * 24,
        endpoints=(CHAT,),
        max_upload_bytes=100 * 1000 * 1000,
        batch_fields_left_out=frozenset({"model", "usage"}),
    ),
    # Together documents purpose "batch-api"; whether it also takes "batch" is unverified, so it is refused here.
    "together": WireDialect(
        purposes=frozenset({"batch-api"}),
        endpoints=(CHAT,),
        status_names=TOGETHER_STATUS,
        iso_times=True,
        together_jobs=True,
        keeps_metadata=False,
        lines_need_method_url=False,
        max_custom_id=64,
        max_upload_bytes=100 * 1000 * 1000,
    ),
}


def together_job(job: Job, dialect: WireDialect, input_bytes: int) -> dict[str, Any]:
    """Together's job object: its own field names, a 0-100 ``progress`` and one ``error`` string."""
    done = job.completed + job.failed
    stamps = (job.times.get(f"{name}_at") for name in ("completed", "failed", "expired", "cancelled"))
    ended = next((stamp for stamp in stamps if stamp is not None), None)
    return {
        "id": job.id, "user_id": "user_emulated", "input_file_id": job.extra["input_file_id"],
        "file_size_bytes": input_bytes, "status": dialect.status(job.status),
        "job_deadline": dialect.time(job.expires_at), "created_at": dialect.time(job.created_at),
        "completed_at": dialect.time(ended), "endpoint": job.endpoint,
        "progress": round(100.0 * done / job.total, 2) if job.total else 0.0, "model_id": job.model,
        "output_file_id": job.extra.get("output_file_id"), "error_file_id": job.extra.get("error_file_id"),
        "error": job.errors[0]["message"] if job.errors else None,
    }  # fmt: skip
