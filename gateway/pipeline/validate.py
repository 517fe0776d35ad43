"""Stage 2 of the data path: line-by-line validation of a batch's input file.

The check runs before anything is sent to a provider. Every problem is reported with its 1-based
line number in OpenAI's ``errors.data`` shape; a file with any problem fails the whole batch.
The file is streamed, so memory grows only with the set of ``custom_id``s seen.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import Batch, now_s
from gateway.settings import LimitSettings

log = logging.getLogger(__name__)

READ_CHUNK = 4 * 1024 * 1024
MAX_MODELS_PER_FILE = 100
"""A file may mix models (each part is routed on its own), but not without bound."""


class _InputLine(msgspec.Struct):
    custom_id: Any = None
    method: Any = None
    url: Any = None
    body: msgspec.Raw = msgspec.Raw(b"")


class _BodyHead(msgspec.Struct):
    model: Any = None


_line_decoder = msgspec.json.Decoder(_InputLine)
_body_decoder = msgspec.json.Decoder(_BodyHead)


@dataclass
class ValidationReport:
    """What validation found: counts, the models asked for, and the problems."""

    line_count: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, int] = field(default_factory=dict)
    """Requests per model named in ``body.model``."""

    @property
    def ok(self) -> bool:
        """True when the file can run."""
        return self.error_count == 0

    def add(self, code: str, message: str, line: int | None, param: str | None, keep: int) -> None:
        """Record one problem; only the first ``keep`` are kept in full."""
        self.error_count += 1
        if len(self.errors) < keep:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def iter_lines(path: Path, max_line_bytes: int) -> Any:
    """Yield ``(line_number, bytes_or_None)`` for each line; None marks a line over the limit.

    Reads fixed-size chunks so a single huge line never has to fit in memory.
    """
    number = 0
    pending = bytearray()
    too_long = False
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    if not too_long:
                        pending += chunk[start:]
                        if len(pending) > max_line_bytes:
                            too_long, pending = True, bytearray()
                    break
                number += 1
                if too_long:
                    yield number, None
                elif pending:
                    pending += chunk[start:end]
                    yield number, (None if len(pending) > max_line_bytes else bytes(pending))
                else:
                    piece = chunk[start:end]
                    yield number, (None if len(piece) > max_line_bytes else piece)
                pending, too_long = bytearray(), False
                start = end + 1
    if pending or too_long:
        yield number + 1, (None if too_long else bytes(pending))


def validate_input_file(path: Path, endpoint: str, limits: LimitSettings) -> ValidationReport:
    """Check every line of a batch input file against the batch's endpoint and the limits."""
    report = ValidationReport()
    keep = limits.max_errors_reported
    seen: set[str] = set()
    for number, raw in iter_lines(path, limits.max_line_bytes):
        report.line_count = number
        if number > limits.max_file_lines:
            report.add(
                "too_many_requests",
                f"The file has more than {limits.max_file_lines} lines, the most one batch accepts.",
                number,
                None,
                keep,
            )
            break
        if raw is None:
            report.add(
                "line_too_long",
                f"Line {number} is longer than {limits.max_line_bytes} bytes.",
                number,
                None,
                keep,
            )
            continue
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        _check_line(raw, number, endpoint, seen, report, keep)
    if report.line_count == 0:
        report.add("empty_file", "The input file is empty: it must hold at least one request.", None, None, keep)
    if report.error_count > len(report.errors):
        hidden = report.error_count - len(report.errors)
        report.errors.append(
            {
                "code": "too_many_errors",
                "message": f"{hidden} more problems were found and not listed.",
                "param": None,
                "line": None,
            }
        )
    return report


def _check_line(raw: bytes, number: int, endpoint: str, seen: set[str], report: ValidationReport, keep: int) -> None:
    if not raw.strip():
        report.add("empty_line", f"Line {number} is blank; every line must be a JSON object.", number, None, keep)
        return
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add(
                "invalid_utf8",
                f"Line {number} is not valid UTF-8 (byte {exc.start + 1}).",
                number,
                None,
                keep,
            )
            return
    try:
        line = _line_decoder.decode(raw)
    except msgspec.ValidationError:
        report.add("invalid_json_line", f"Line {number} is not a JSON object.", number, None, keep)
        return
    except msgspec.DecodeError as exc:
        report.add("invalid_json_line", f"Line {number} is not valid JSON: {exc}.", number, None, keep)
        return
    custom_id = line.custom_id
    if not isinstance(custom_id, str) or not custom_id:
        report.add(
            "invalid_custom_id",
            f"Line {number}: 'custom_id' must be a non-empty string.",
            number,
            "custom_id",
            keep,
        )
    elif custom_id in seen:
        report.add(
            "duplicate_custom_id",
            f"Line {number}: the custom_id '{custom_id[:100]}' is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch.",
            number,
            "custom_id",
            keep,
        )
    else:
        seen.add(custom_id)
    if line.method != "POST":
        report.add("invalid_method", f"Line {number}: 'method' must be \"POST\".", number, "method", keep)
    if line.url != endpoint:
        report.add(
            "url_mismatch",
            f"Line {number}: 'url' is {_short(line.url)} but the batch's endpoint is '{endpoint}'.",
            number,
            "url",
            keep,
        )
    _check_body(line.body, number, report, keep)


def _check_body(body: msgspec.Raw, number: int, report: ValidationReport, keep: int) -> None:
    if not body:
        report.add("missing_body", f"Line {number}: 'body' is missing.", number, "body", keep)
        return
    try:
        head = _body_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        report.add("invalid_body", f"Line {number}: 'body' must be a JSON object.", number, "body", keep)
        return
    if not isinstance(head.model, str) or not head.model:
        report.add(
            "missing_model",
            f"Line {number}: 'body.model' must be a non-empty string.",
            number,
            "body.model",
            keep,
        )
        return
    if head.model not in report.models and len(report.models) >= MAX_MODELS_PER_FILE:
        report.add(
            "too_many_models",
            f"Line {number}: the file names more than {MAX_MODELS_PER_FILE} different models.",
            number,
            "body.model",
            keep,
        )
        return
    report.models[head.model] = report.models.get(head.model, 0) + 1


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def run(context: GatewayContext, batch: Batch) -> None:
    """Stage entry: validate a ``validating`` batch, then fail it or queue it for routing."""
    async with context.sessions() as session:
        input_file = await repo.get_file(session, batch.team_id, batch.input_file_id)
    if batch.status == "cancelling":
        await finish_unstarted(context, batch, status="cancelled")
        return
    if input_file is None:
        report = ValidationReport()
        report.add("input_file_missing", f"The input file '{batch.input_file_id}' was deleted.", None, None, 1)
    else:
        with context.blobs.local_path(input_file.storage_key) as path:
            report = await asyncio.to_thread(validate_input_file, path, batch.endpoint, context.settings.limits)
    now = now_s()
    async with context.sessions() as session:
        if report.ok:
            values: dict[str, Any] = {
                "status": "in_progress",
                "in_progress_at": now,
                "request_total": report.line_count,
                "model": next(iter(report.models)) if len(report.models) == 1 else None,
                "stage": "route",
            }
        else:
            values = {"status": "failed", "failed_at": now, "errors": report.errors, "stage": "done"}
        changed = await repo.update_batch_if(session, batch.id, expected_status="validating", values=values)
        await session.commit()
    if changed:
        log.info("batch %s validated: %s lines, %s problems", batch.id, report.line_count, report.error_count)


async def finish_unstarted(context: GatewayContext, batch: Batch, status: str) -> None:
    """End a batch that never reached a provider."""
    now = now_s()
    stamp = {"cancelled": "cancelled_at", "failed": "failed_at", "expired": "expired_at"}[status]
    async with context.sessions() as session:
        await repo.update_batch_if(
            session, batch.id, expected_status=batch.status, values={"status": status, stamp: now, "stage": "done"}
        )
        await session.commit()
