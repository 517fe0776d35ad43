"""Control characters in what clients send: ids, names, headers and free text.

PostgreSQL cannot store a NUL, and no control character (U+0000-U+001F, U+007F-U+009F) has a meaning
in an id or a name. Free text (metadata values, a key's label) may hold tab, line feed and carriage
return, and no other control character.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest, bad_request

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Any control character."""
CONTROL_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""A control character other than tab, line feed and carriage return."""


def invalid_characters(where: str, param: str | None) -> InvalidRequest:
    """The 400 answered for a control character."""
    return bad_request(
        f"{where} contains a control character (such as NUL or a line break), which is not allowed.",
        param=param,
        code="invalid_characters",
    )


def has_control_characters(value: str, *, free_text: bool = False) -> bool:
    """True when ``value`` holds a control character (tab and line breaks do not count in free text)."""
    return (CONTROL_BUT_WHITESPACE if free_text else CONTROL).search(value) is not None


def check_text(value: str, param: str, *, free_text: bool = False) -> str:
    """``value`` unless it holds a control character (tab and line breaks allowed in free text)."""
    if has_control_characters(value, free_text=free_text):
        raise invalid_characters(f"'{param}'", param)
    return value
