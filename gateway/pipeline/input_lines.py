"""The line-by-line check of a batch input file, shared by intake and the validate stage.

Every problem is reported with its 1-based line number in OpenAI's ``errors.data`` shape. The file is
streamed, so memory grows only with the set of ``custom_id``s seen. Pure functions of a path (or a local
socket) and limits, with light imports: the check runs in a CPU process of its own (:mod:`gateway.cpu_pool`).

Two ways in: :func:`validate_input_file` checks a stored file against a batch's endpoint (the validate
stage); :func:`check_upload` checks an upload's bytes while they arrive, before any batch names the file.
A clean upload's check is kept with the file (:class:`UploadCheck`), and the validate stage adopts it
instead of reading the file again when it still applies (:func:`report_from_check`).
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gateway import jsondepth
from gateway.pipeline.line_blocks import LineBlock, LineItem, PlainBlock, line_items
from gateway.pipeline.line_figures import BodyHeads, LineFigures

if TYPE_CHECKING:
    from gateway.settings import LimitSettings

READ_CHUNK = 4 * 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"
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
    url: str | None = None
    """The url every line had to name: the batch's endpoint, or for an upload's check the first valid line's."""
    figures: bytes | None = None
    """The :class:`~gateway.pipeline.line_figures.LineFigures` of a clean file's requests, as stored."""

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
    return lines_of(_chunks_of(path), max_line_bytes)


def _chunks_of(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            yield chunk


def lines_of(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """:func:`iter_lines` over bytes arriving in pieces of any size (a file's chunks, a socket's reads)."""
    for number, raw, _ in _counted_lines(chunks, max_line_bytes):
        yield number, raw


def _counted_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[LineItem]:
    """:func:`lines_of`, each line with its count of opening brackets (``[`` and ``{``, strings included): a
    bound on its depth, taken for a whole read at once (a pass at memory speed) rather than line by line."""
    for item in line_items(chunks, max_line_bytes):
        if isinstance(item, LineBlock):
            yield from item.items(max_line_bytes)
        else:
            yield item


def validate_input_file(path: Path, endpoint: str, limits: LimitSettings) -> ValidationReport:
    """Check every line of a batch input file against the batch's endpoint and the limits; a clean file's report
    carries its requests' figures."""
    report = ValidationReport()
    figures = LineFigures()
    repeated = _check_lines(line_items(_chunks_of(path), limits.max_line_bytes), endpoint, limits, report, figures)
    if repeated:
        _report_duplicates(path, limits.max_line_bytes, repeated, report, limits.max_errors_reported)
    if report.ok and report.line_count and len(figures) == report.line_count:
        report.figures = figures.to_bytes()
    return _finish(report, limits.max_errors_reported)


class LineLimits(Protocol):
    """The limits a line check applies (:class:`~gateway.settings.LimitSettings` has them)."""

    @property
    def max_line_bytes(self) -> int: ...
    @property
    def max_file_lines(self) -> int: ...
    @property
    def max_errors_reported(self) -> int: ...


@dataclass(frozen=True)
class UploadLimits:
    """The limits an upload's check applies, as plain values: its process need not import the settings."""

    max_line_bytes: int
    max_file_lines: int
    max_errors_reported: int = 1
    """The check stops at the first problem: the file is checked in full (every problem named) by its batches."""

    @classmethod
    def of(cls, limits: LineLimits) -> UploadLimits:
        """The upload check's share of ``limits``."""
        return cls(limits.max_line_bytes, limits.max_file_lines)


def _check_lines(
    items: Iterable[LineItem | LineBlock],
    endpoint: str | None,
    limits: LineLimits,
    report: ValidationReport,
    figures: LineFigures | None = None,
) -> set[int]:
    """Check each line into ``report``; return the hashes of the ``custom_id``s seen more than once, which a
    second pass settles. With no ``endpoint``, every line must name the url the first valid line names. Each
    valid line's figures go into ``figures`` (its lines then match the file's only when no problem is found).

    A block whose lines are all plain requests is taken whole (:meth:`LineBlock.decoded`); any other block is
    checked line by line."""
    keep = limits.max_errors_reported
    # Duplicates are found by the hash of each custom_id (half the memory of the strings); the rare
    # repeated hash is settled exactly by a second pass over the lines concerned.
    seen: set[int] = set()
    repeated: set[int] = set()
    max_lines = limits.max_file_lines
    models = report.models
    number = 0
    for item in items:
        if isinstance(item, LineBlock):
            last = item.first + len(item.lines) - 1
            if endpoint is not None and last <= max_lines:
                plain = item.decoded(endpoint, limits.max_line_bytes, MAX_LINE_DEPTH)
                if plain is not None and _take_block(plain, models, seen, repeated):
                    if figures is not None:
                        figures.add(plain.heads)
                    number = last
                    continue
            lines: Iterable[LineItem] = item.items(limits.max_line_bytes)
        else:
            lines = (item,)
        for number, raw, openings in lines:
            if number > max_lines:
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
            if openings > MAX_LINE_DEPTH and jsondepth.nesting_depth(raw) > MAX_LINE_DEPTH:
                message = f"Line {number} is nested more than {MAX_LINE_DEPTH} levels deep (arrays and objects)."
                report.add("nesting_too_deep", message, number, None, keep)
                continue
            # A line ending in CRLF decodes as it is (a carriage return is JSON whitespace); only the slow path
            # cuts it.
            line = _fast_decode(raw)
            if endpoint is None and line is not None:
                endpoint = line.url
            if (
                line is None
                or line.method != "POST"
                or line.url != endpoint
                or not line.custom_id
                or not line.body.model
            ):
                custom_id, line = _check_line(raw[:-1] if raw.endswith(b"\r") else raw, number, endpoint, report, keep)
            else:
                custom_id = line.custom_id
            if line is not None:
                model = line.body.model
                if model in models:
                    models[model] += 1
                else:
                    _count_model(model, number, report, keep)
                if figures is not None and not report.error_count:
                    heads = _heads_of(raw)
                    if heads is None:
                        figures = None  # none kept: routing reads the file
                    else:
                        figures.add(heads)
            if custom_id is None:
                continue
            key = hash(custom_id)
            if key in seen:
                repeated.add(key)
            else:
                seen.add(key)
        else:
            continue
        break  # over the most lines a file may hold
    report.line_count = number
    report.url = endpoint
    return repeated


def _take_block(block: PlainBlock, models: dict[str, int], seen: set[int], repeated: set[int]) -> bool:
    """Count a block of plain requests into ``models``, ``seen`` and ``repeated``, as line by line would; False
    (nothing counted) when it names a model beyond :data:`MAX_MODELS_PER_FILE`, which its lines then report."""
    heads = block.heads
    named = {heads.one_model: len(heads.models)} if heads.one_model is not None else Counter(heads.models)
    if len(models) + len(named.keys() - models.keys()) > MAX_MODELS_PER_FILE:
        return False
    for model, count in named.items():
        models[model] = models.get(model, 0) + count
    hashes = list(map(hash, block.custom_ids))
    fresh = set(hashes)
    if len(fresh) < len(hashes) or not seen.isdisjoint(fresh):
        repeated |= (fresh & seen) | {key for key, times in Counter(hashes).items() if times > 1}
    seen |= fresh
    return True


def _finish(report: ValidationReport, keep: int) -> ValidationReport:
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


# --- an upload's check, while it arrives -------------------------------------------------------------------

UPLOAD_CHECK_VERSION = 1
"""Changes whenever the check does (a rule, :data:`MAX_LINE_DEPTH`, :data:`MAX_MODELS_PER_FILE`): an upload
checked by other rules is checked again when a batch names it."""
UPLOAD_READ_BYTES = 1024 * 1024
UPLOAD_STALL_S = 60.0
"""Longest wait for an upload's next bytes: a stalled check ends, and frees its process, rather than wait on."""


class UploadCheck(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the check of a clean upload found, kept with the file (``files.line_check``) for its batches."""

    version: int
    url: str
    """The url every line names: a batch with another endpoint checks the file again (and fails it)."""
    lines: int
    size: int
    models: dict[str, int]
    limits: list[int]
    """``max_line_bytes`` and ``max_file_lines`` it was checked under: other limits check the file again."""


def _checked_limits(limits: LineLimits) -> list[int]:
    return [limits.max_line_bytes, limits.max_file_lines]


@dataclass(frozen=True)
class CheckedUpload:
    """What the check of a clean upload gives the API: the check to keep with the file, and its lines' figures."""

    check: dict[str, Any]
    """The :class:`UploadCheck`, JSON-ready."""
    figures: bytes | None
    """The :class:`~gateway.pipeline.line_figures.LineFigures` of its requests, as stored; None if not taken."""


def check_upload(socket_path: str, limits: UploadLimits) -> CheckedUpload | None:
    """Check the bytes an upload sends to ``socket_path`` (a local socket the API listens on) while they arrive.

    Returns what the check of a file with no problem found, or None for a file with any problem, a stream that
    stalls or breaks off: that file is checked in full when a batch names it (which reports its problems with
    their line numbers). It stops at the first problem, since a file with one is checked again anyway.
    """
    report = ValidationReport()
    figures = LineFigures()
    size = 0

    def received(stream: socket.socket) -> Iterator[bytes]:
        nonlocal size
        while not report.error_count and (data := stream.recv(UPLOAD_READ_BYTES)):
            size += len(data)
            yield data

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
            stream.settimeout(UPLOAD_STALL_S)
            stream.connect(socket_path)
            repeated = _check_lines(line_items(received(stream), limits.max_line_bytes), None, limits, report, figures)
    except OSError:  # the upload is gone, stalled (a timeout) or broke off: no verdict
        return None
    if report.error_count or repeated or not report.line_count or report.url is None:
        return None
    limits_used = _checked_limits(limits)
    check = UploadCheck(UPLOAD_CHECK_VERSION, report.url, report.line_count, size, report.models, limits_used)
    taken = len(figures) == report.line_count
    return CheckedUpload(msgspec.to_builtins(check), figures.to_bytes() if taken else None)


def report_from_check(stored: dict[str, Any] | None, endpoint: str, limits: LimitSettings) -> ValidationReport | None:
    """The validation report an upload's check gives a batch with ``endpoint`` under ``limits``, or None when
    there is no check, or it does not apply (another endpoint, other limits or rules): then the file is checked."""
    if not stored or stored.get("version") != UPLOAD_CHECK_VERSION:
        return None
    try:
        check = msgspec.convert(stored, UploadCheck)
    except msgspec.ValidationError:
        return None
    if check.url != endpoint or check.limits != _checked_limits(limits):
        return None
    return ValidationReport(line_count=check.lines, models=dict(check.models), url=check.url)


def _heads_of(raw: bytes) -> BodyHeads | None:
    """The figures of one valid line (a line the block decode did not take); None if they cannot be read."""
    try:
        return BodyHeads([_line_decoder.decode(raw).body])
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


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
    raw: bytes, number: int, endpoint: str | None, report: ValidationReport, keep: int
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
    if number == 1 and raw.startswith(UTF8_BOM):
        message = "Line 1 starts with a byte order mark (BOM): save the file as UTF-8 without a BOM."
        report.add("invalid_json_line", message, number, None, keep)
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
    if not isinstance(line.url, str) or line.url != endpoint:  # a missing url matches no endpoint, not even none
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
    return valid_id, _ValidLine(custom_id=valid_id, method="POST", url=line.url, body=_ValidBody(model=model))


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
