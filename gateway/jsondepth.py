"""How deeply a JSON text nests, measured on its bytes without parsing it.

JSON decoders recurse once per nesting level, so a text nested thousands of levels deep makes them
raise ``RecursionError`` (or worse, exhaust a thread's stack). The gateway measures the depth first
and refuses texts nested deeper than its documented limits, before any decoder sees them.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable
from itertools import accumulate
from typing import TypeVar

T = TypeVar("T")

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
"""A JSON string, or an unterminated one up to the end (possessive: linear time, no backtracking)."""
_BRACKETS = b"[]{}"
_NOT_BRACKET = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
"""Opening brackets become +1 and closing ones -1, read as signed bytes."""


def nesting_depth(raw: bytes) -> int:
    """The deepest level of arrays and objects in ``raw`` (0 for a scalar).

    Brackets inside strings do not count. For a malformed text, the deepest level a decoder reaches
    before it finds the error.
    """
    structure = _STRING.sub(b"", raw).translate(_STEP, _NOT_BRACKET)
    return max(accumulate(array("b", structure), initial=0))


def nests_deeper_than(raw: bytes, limit: int) -> bool:
    """True when ``raw`` nests more than ``limit`` levels deep.

    Cheap for nearly every text: one with at most ``limit`` opening brackets cannot be too deep, and
    counting them is a pass at memory speed; only the others are measured exactly.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return nesting_depth(raw) > limit


TOO_DEEP = b'"\\u0000nested too deeply to read"'
"""What :func:`capped` puts in place of a value nested too deeply: a JSON string no provider sends."""
TOO_DEEP_TEXT = "\x00nested too deeply to read"
""":data:`TOO_DEEP` decoded."""
MAX_ANSWER_DEPTH = 256
"""Levels of a provider's answer kept when it nests deeper than a decoder goes (no real answer comes close)."""
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)
"""A JSON string (skipped whole, brackets in it included) or one bracket."""


def capped(raw: bytes, limit: int = MAX_ANSWER_DEPTH) -> bytes:
    """``raw`` with every array or object that starts deeper than ``limit`` levels replaced by :data:`TOO_DEEP`.

    For an answer a decoder cannot read whole (it raises ``RecursionError``): the rest of it, a provider's other
    results among them, can then be read, and what was cut is found by its marker. A pure-Python scan, for this
    rare path only.
    """
    parts: list[bytes] = []
    depth, kept_from, cut_from = 0, 0, -1
    for token in _TOKEN.finditer(raw):
        char = raw[token.start()]
        if char == 0x22:  # a string
            continue
        if char in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth == limit + 1:
                cut_from = token.start()
        else:
            if depth == limit + 1 and cut_from >= 0:
                parts += [raw[kept_from:cut_from], TOO_DEEP]
                kept_from, cut_from = token.end(), -1
            depth -= 1
    parts.append(raw[kept_from:] if cut_from < 0 else raw[kept_from:cut_from] + TOO_DEEP)
    return b"".join(parts)


def decode_within(decode: Callable[[bytes], T], raw: bytes, limit: int = MAX_ANSWER_DEPTH) -> tuple[T, bool]:
    """``decode(raw)``, and whether values nested deeper than ``limit`` had to be cut (:func:`capped`) first."""
    try:
        return decode(raw), False
    except RecursionError:
        return decode(capped(raw, limit)), True
