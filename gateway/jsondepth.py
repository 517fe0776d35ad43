"""How deeply a JSON text nests, measured on its bytes without parsing it.

JSON decoders recurse once per nesting level, so a text nested thousands of levels deep makes them
raise ``RecursionError`` (or worse, exhaust a thread's stack). The gateway measures the depth first
and refuses texts nested deeper than its documented limits, before any decoder sees them.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate

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
