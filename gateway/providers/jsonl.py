"""JSON Lines as every adapter reads and writes them: split on ``\\n`` only, one JSON value a line.

Text-mode line iteration also breaks on U+2028 and other separators that may appear raw inside a
JSON string, which would cut a valid JSON line in two; everything here works on bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["LineSplitter", "encode_line", "iter_lines"]


class LineSplitter:
    """Splits a byte stream on ``\\n`` only, buffering a partial last line between chunks."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines in ``chunk`` (and the buffered tail), without their terminators."""
        if not chunk:
            return []
        parts = (self._tail + chunk).split(b"\n")
        self._tail = parts.pop()
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


def encode_line(value: Mapping[str, Any]) -> bytes:
    """One JSONL line (with its newline)."""
    return msgspec.json.encode(value) + b"\n"
