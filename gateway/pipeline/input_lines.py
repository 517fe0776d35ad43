"""The line-by-line check of a batch input file, for the validate stage (:mod:`gateway.pipeline.validate`).

Every problem is reported with its 1-based line number in OpenAI's ``errors.data`` shape. The file is
streamed, so memory grows only with the set of ``custom_id``s seen. Pure functions of a path and limits,
with light imports: the check runs in a CPU process of its own (:mod:`gateway.cpu_pool`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway import jsondepth
from gateway.settings import LimitSettings

READ_CHUNK = 4 * 1024 * 1024
MAX_MODELS_PER_FILE = 100
"""A file may mix models (each part is routed on its own), but not without bound."""
MAX_LINE_DEPTH = 128
"""Deepest nesting of arrays and objects in one input line. Real requests (messages, content parts,
tool and response JSON schemas) stay far below it; decoders recurse once per level, so a line
nested thousands of levels deep would crash them rather than be rejected."""


class _InputLine(msgspec.Struct):
    custom_id: Any = None
    method: Any = None
    url: Any = None
    body: msgspec.Raw = msgspec.Raw(b"")


class _BodyHead(msgspec.Struct):
    model: Any = None


class _ValidBody(msgspec.Struct):
    model: str


class _ValidLine(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: _ValidBody


_line_decoder = msgspec.json.Decoder(_InputLine)
_body_decoder = msgspec.json.Decoder(_BodyHead)
_valid_decoder = msgspec.json.Decoder(_ValidLine)
"""The fast path: one decode that only succeeds for a well-formed line; anything else is re-read slowly."""


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


def iter_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, bytes_or_None)`` for each line; None marks a line over the limit.

    Reads fixed-size chunks so a single huge line never has to fit in memory.
    """
    number = 0
    carry = bytearray()
    too_long = False
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            pieces = chunk.split(b"\n")
            tail = pieces.pop()
            if pieces and (carry or too_long):
                number += 1
                if not too_long:
                    carry += pieces[0]
                yield number, (None if too_long or len(carry) > max_line_bytes else bytes(carry))
                carry, too_long = bytearray(), False
                pieces = pieces[1:]
            for piece in pieces:
                number += 1
                yield number, (piece if len(piece) <= max_line_bytes else None)
            if not too_long:
                carry += tail
                if len(carry) > max_line_bytes:
                    carry, too_long = bytearray(), True
    if carry or too_long:
        yield number + 1, (None if too_long else bytes(carry))


def validate_input_file(path: Path, endpoint: str, limits: LimitSettings) -> ValidationReport:
    """Check every line of a batch input file against the batch's endpoint and the limits."""
    report = ValidationReport()
    keep = limits.max_errors_reported
    # Duplicates are found by the hash of each custom_id (half the memory of the strings); the rare
    # repeated hash is settled exactly by a second pass over the lines concerned.
    seen: set[int] = set()
    repeated: set[int] = set()
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
        if jsondepth.nests_deeper_than(raw, MAX_LINE_DEPTH):
            message = f"Line {number} is nested more than {MAX_LINE_DEPTH} levels deep (arrays and objects)."
            report.add("nesting_too_deep", message, number, None, keep)
            continue
        line = _fast_decode(raw)
        if line is None or line.method != "POST" or line.url != endpoint or not line.custom_id or not line.body.model:
            custom_id, line = _check_line(raw, number, endpoint, report, keep)
        else:
            custom_id = line.custom_id
        if line is not None:
            _count_model(line.body.model, number, report, keep)
        if custom_id is None:
            continue
        key = hash(custom_id)
        if key in seen:
            repeated.add(key)
        else:
            seen.add(key)
    if repeated:
        _report_duplicates(path, limits.max_line_bytes, repeated, report, keep)
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


def _fast_decode(raw: bytes) -> _ValidLine | None:
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return _valid_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _count_model(model: str, number: int, report: ValidationReport, keep: int) -> None:
    if model not in report.models and len(report.models) >= MAX_MODELS_PER_FILE:
        report.add(
            "too_many_models",
            f"Line {number}: the file names more than {MAX_MODELS_PER_FILE} different models.",
            number,
            "body.model",
            keep,
        )
        return
    report.models[model] = report.models.get(model, 0) + 1


def _report_duplicates(path: Path, max_line_bytes: int, hashes: set[int], report: ValidationReport, keep: int) -> None:
    """Second pass over the lines whose custom_id hash repeated: report the true duplicates exactly."""
    first_line: dict[str, int] = {}
    for number, raw in iter_lines(path, max_line_bytes):
        if raw is None or jsondepth.nests_deeper_than(raw, MAX_LINE_DEPTH):
            continue
        try:
            custom_id = _line_decoder.decode(raw.rstrip(b"\r")).custom_id
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            continue
        if not isinstance(custom_id, str) or not custom_id or hash(custom_id) not in hashes:
            continue
        if custom_id in first_line:
            report.add(
                "duplicate_custom_id",
                f"Line {number}: the custom_id '{custom_id[:100]}' is a duplicate of line {first_line[custom_id]}. "
                "The custom_id parameter must be unique for each request in a batch.",
                number,
                "custom_id",
                keep,
            )
        else:
            first_line[custom_id] = number
    # Errors in line order; on one line the duplicate first, as a one-pass check would have found it.
    report.errors.sort(key=lambda e: (e["line"] if e["line"] is not None else 0, e["code"] != "duplicate_custom_id"))


def _check_line(
    raw: bytes, number: int, endpoint: str, report: ValidationReport, keep: int
) -> tuple[str | None, _ValidLine | None]:
    """The slow path: name every problem of one line; return its custom_id, and the line if it is valid."""
    errors_before = report.error_count
    if not raw.strip():
        report.add("empty_line", f"Line {number} is blank; every line must be a JSON object.", number, None, keep)
        return None, None
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add("invalid_utf8", f"Line {number} is not valid UTF-8 (byte {exc.start + 1}).", number, None, keep)
            return None, None
    try:
        line = _line_decoder.decode(raw)
    except msgspec.ValidationError:
        report.add("invalid_json_line", f"Line {number} is not a JSON object.", number, None, keep)
        return None, None
    except msgspec.DecodeError as exc:
        report.add("invalid_json_line", f"Line {number} is not valid JSON: {exc}.", number, None, keep)
        return None, None
    custom_id = line.custom_id
    if not isinstance(custom_id, str) or not custom_id:
        message = f"Line {number}: 'custom_id' must be a non-empty string."
        report.add("invalid_custom_id", message, number, "custom_id", keep)
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
    model = _check_body(line.body, number, report, keep)
    valid_id = custom_id if isinstance(custom_id, str) and custom_id else None
    if report.error_count > errors_before or model is None or valid_id is None:
        return valid_id, None
    return valid_id, _ValidLine(custom_id=valid_id, method="POST", url=endpoint, body=_ValidBody(model=model))


def _check_body(body: msgspec.Raw, number: int, report: ValidationReport, keep: int) -> str | None:
    if not body:
        report.add("missing_body", f"Line {number}: 'body' is missing.", number, "body", keep)
        return None
    try:
        head = _body_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        report.add("invalid_body", f"Line {number}: 'body' must be a JSON object.", number, "body", keep)
        return None
    if not isinstance(head.model, str) or not head.model:
        message = f"Line {number}: 'body.model' must be a non-empty string."
        report.add("missing_model", message, number, "body.model", keep)
        return None
    return head.model


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
