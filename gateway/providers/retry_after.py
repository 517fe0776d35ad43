"""Parsing of the retry hints providers attach to 429 and 503 answers.

Shared by every adapter. All functions are total: a hint that cannot be understood gives ``None``,
never an exception, and a hint in the past gives ``0.0``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["parse_google_retry_delay", "parse_retry_after", "parse_retry_after_value"]

_DURATION_S = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*s\s*$")
_DECIMAL = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")


def _non_negative(value: float) -> float | None:
    if math.isnan(value) or math.isinf(value):
        return None
    return max(value, 0.0)


def _number(text: str) -> float | None:
    text = text.strip()
    # float() also accepts "inf", "nan", "1_000" and non-ASCII digits; a delay is plain decimal digits.
    if not _DECIMAL.match(text):
        return None
    try:
        return _non_negative(float(text))
    except ValueError:
        return None


def parse_retry_after_value(value: str, *, now: float | None = None) -> float | None:
    """Seconds to wait from one ``Retry-After`` value: delay-seconds or an HTTP-date (RFC 9110)."""
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    try:
        return _non_negative(when.timestamp() - current)
    except (OverflowError, OSError, ValueError):
        return None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait according to the response headers, or ``None`` if they give no usable hint.

    ``retry-after-ms`` (milliseconds, sent by OpenAI) wins over ``retry-after``. Header names are
    matched case-insensitively whatever the mapping type.
    """
    lowered = {str(key).lower(): str(val) for key, val in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        value = _number(millis)
        if value is not None:
            return value / 1000.0
    seconds = lowered.get("retry-after")
    if seconds is not None:
        return parse_retry_after_value(seconds, now=now)
    return None


def parse_google_retry_delay(value: str) -> float | None:
    """Seconds from a Google ``RetryInfo.retryDelay`` duration such as ``"1.5s"``."""
    match = _DURATION_S.match(value)
    return _non_negative(float(match.group(1))) if match else None
