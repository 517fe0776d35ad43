"""Input lines in blocks: the whole lines of each read, and one decode for a block whose lines are all plain.

A file's lines arrive in reads (a file's chunks, a socket's pieces). :func:`line_items` cuts them into whole
lines: a :class:`LineBlock` for the lines wholly inside one read, and a single line for the one a read
finishes after an earlier one started it. :meth:`LineBlock.decoded` decodes a block's lines without a step of
Python per line when every one is a plain request, with a decoder that refuses anything else; anything less
than plain gives None, and the caller checks that block line by line, naming its problems exactly.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

import msgspec

from gateway.pipeline.line_figures import BodyHeads

LineItem = tuple[int, bytes | None, int]
"""``(line number, its bytes or None when over the byte limit, its count of opening brackets)``."""

_OPENINGS_AND_NEWLINES = b"[{\n"
_ALL_BUT_OPENINGS_AND_NEWLINES = bytes(b for b in range(256) if b not in _OPENINGS_AND_NEWLINES)
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_CUSTOM_ID = operator.attrgetter("custom_id")
_BODY = operator.attrgetter("body")


class LineBlock:
    """Whole lines of one read: ``len(lines)`` lines from line ``first`` on (without their newlines), with the
    opening brackets of each (only their number counts), found for the whole read at once."""

    __slots__ = ("ascii", "brackets", "first", "lines", "read_bytes")

    def __init__(self, first: int, lines: list[bytes], brackets: bytes, read_bytes: int, ascii: bool) -> None:
        self.first = first
        self.lines = lines
        self.brackets = brackets
        """Each line's opening brackets, a newline between lines (aligned with ``lines``)."""
        self.read_bytes = read_bytes
        """The size of the read the lines came from: no line is longer."""
        self.ascii = ascii
        """The read was all ASCII (no line needs its UTF-8 checked)."""

    def items(self, max_line_bytes: int) -> Iterator[LineItem]:
        """The block's lines one by one, as :func:`line_items` gives a single line."""
        openings = self.brackets.split(b"\n")
        for index, line in enumerate(self.lines):
            yield self.first + index, (line if len(line) <= max_line_bytes else None), len(openings[index])

    def decoded(self, endpoint: str, max_line_bytes: int, max_depth: int) -> PlainBlock | None:
        """Every line as a plain request for ``endpoint`` (``custom_id``, ``method``, ``url``, the body's model and
        caps read), or None when any line may be less than plain: the block is then checked line by line."""
        lines = self.lines
        if self.read_bytes > max_line_bytes and max(map(len, lines)) > max_line_bytes:
            return None
        if _more_openings_than(max_depth).search(self.brackets):
            return None  # a bound on some line's depth is over the limit: its own check measures it
        for line in lines if not self.ascii and not all(map(bytes.isascii, lines)) else ():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return None
        try:
            # One line, one value: a line's decode fails on anything after its object.
            plain = list(map(_plain_decoder(endpoint).decode, lines))
            return PlainBlock(list(map(_CUSTOM_ID, plain)), BodyHeads(list(map(_BODY, plain))))
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None


class PlainBlock:
    """A block of plain requests: their ``custom_id``s, and their bodies' models, sizes and caps."""

    __slots__ = ("custom_ids", "heads")

    def __init__(self, custom_ids: list[str], heads: BodyHeads) -> None:
        self.custom_ids = custom_ids
        self.heads = heads


def line_items(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[LineItem | LineBlock]:
    """The lines of bytes arriving in pieces of any size, in order: a :class:`LineBlock` for the whole lines inside
    one piece, a :data:`LineItem` for a line that spans pieces (or is the last, without a newline).

    A line over ``max_line_bytes`` is never held whole: it is counted and marked (None) as it goes by.
    """
    number = 0
    carry = bytearray()
    too_long = False
    for chunk in chunks:
        lines = chunk.split(b"\n")
        # The brackets of each line, found for the whole read at once (a pass at memory speed).
        brackets = chunk.translate(None, _ALL_BUT_OPENINGS_AND_NEWLINES)
        tail = lines.pop()
        start, end = 0, brackets.rfind(b"\n")  # the whole lines' brackets end at the read's last newline
        if lines and (carry or too_long):
            number += 1
            if not too_long:
                carry += lines[0]
            line = None if too_long or len(carry) > max_line_bytes else bytes(carry)
            yield number, line, _openings(line)
            carry, too_long = bytearray(), False
            del lines[0]
            start = brackets.find(b"\n") + 1
        if lines:
            yield LineBlock(number + 1, lines, brackets[start:end], len(chunk), chunk.isascii())
            number += len(lines)
        if not too_long:
            carry += tail
            if len(carry) > max_line_bytes:
                carry, too_long = bytearray(), True
    if carry or too_long:
        line = None if too_long else bytes(carry)
        yield number + 1, line, _openings(line)


def _openings(line: bytes | None) -> int:
    return 0 if line is None else line.count(b"[") + line.count(b"{")


@functools.cache
def _more_openings_than(most: int) -> re.Pattern[bytes]:
    """Finds, in a block's brackets, a line with more than ``most`` opening brackets."""
    return re.compile(b"[^\n]{%d}" % (most + 1))


@functools.cache
def _plain_decoder(endpoint: str) -> msgspec.json.Decoder[Any]:
    """A decoder that takes only plain requests for ``endpoint``: anything else is an error, not a value.

    Its structs are not tracked by the garbage collector: a block's thousands of them would otherwise set it
    off again and again (it halves the decode's speed)."""
    fields = [("custom_id", _NonEmpty), ("method", Literal["POST"]), ("url", Literal[endpoint]), ("body", msgspec.Raw)]
    return msgspec.json.Decoder(msgspec.defstruct("PlainLine", fields, gc=False))
