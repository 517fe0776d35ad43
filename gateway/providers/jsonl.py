"""JSON Lines as every adapter reads and writes them: split on ``\\n`` only, one JSON value a line.

Text-mode line iteration also breaks on U+2028 and other separators that may appear raw inside a
JSON string, which would cut a valid JSON line in two; everything here works on bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from gateway.translate import TranslationError

__all__ = ["LineSplitter", "encode_line", "iter_line_blocks", "iter_lines", "iter_requests"]


class LineSplitter:
    """Splits a byte stream on ``\\n`` only, buffering a partial last line between chunks."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines in ``chunk`` (and the buffered tail), without their terminators."""
        if not chunk:
            return []
        data = self._tail + chunk
        parts = data.split(b"\n")
        self._tail = parts.pop()
        if b"\r" not in data:
            return parts
        return [part.removesuffix(b"\r") for part in parts]

    def flush(self) -> list[bytes]:
        """The last line if the stream did not end with a newline."""
        tail, self._tail = self._tail.removesuffix(b"\r"), b""
        return [tail] if tail else []


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for each non-blank line of a file, read one line at a time."""
    with path.open("rb") as lines:  # binary iteration splits on b"\n" only
        for number, raw in enumerate(lines, 1):
            if raw.strip():
                yield number, raw


BLOCK_BYTES = 1024 * 1024
"""Bytes :func:`iter_line_blocks` reads at a time."""


def iter_line_blocks(path: Path, block_bytes: int | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """``(number of the first line, lines)`` for the whole lines of each read of a file (of ``block_bytes``, by
    default :data:`BLOCK_BYTES`), blank ones included, without their terminators: a caller can handle a read's
    lines at once and still name each line."""
    splitter, number = LineSplitter(), 1
    with path.open("rb") as source:
        while chunk := source.read(block_bytes or BLOCK_BYTES):
            if lines := splitter.feed(chunk):
                yield number, lines
                number += len(lines)
    if last := splitter.flush():
        yield number, last


def encode_line(value: Mapping[str, Any]) -> bytes:
    """One JSONL line (with its newline)."""
    return msgspec.json.encode(value) + b"\n"


class _RequestLine(msgspec.Struct):
    custom_id: Any = None
    body: Any = None


_request_decoder = msgspec.json.Decoder(_RequestLine)


def iter_requests(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | TranslationError]]:
    """``(line number, custom_id, body)`` of each request line of a shard input; a body that is not an object
    comes as the :class:`TranslationError` its 400 line names. Lines that are not requests are skipped."""
    for number, raw in iter_lines(path):
        try:
            line = _request_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if not isinstance(line.custom_id, str) or not line.custom_id:
            continue
        if isinstance(line.body, dict):
            yield number, line.custom_id, line.body
        else:
            yield number, line.custom_id, TranslationError("'body' must be an object.", "body")
