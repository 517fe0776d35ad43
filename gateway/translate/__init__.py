"""Pure request and response translation between OpenAI format and other providers' formats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TranslationError(ValueError):
    """A request the target provider cannot run as asked; it becomes an OpenAI-format 400 line for that request
    and is never sent. ``param`` names the offending field, ``code`` is the OpenAI error code."""

    def __init__(self, message: str, param: str | None = None, code: str = "unsupported_parameter") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class MalformedResult(ValueError):
    """A provider's result line the gateway cannot use; the message says why, never quoting the line."""


def optional_number(body: Mapping[str, Any], name: str) -> float | None:
    """The number in ``body[name]``, None when absent; raises :class:`TranslationError` for a non-number."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslationError(f"'{name}' must be a number.", name, "invalid_value")
    return float(value)
