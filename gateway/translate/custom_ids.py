"""``custom_id``s a provider cannot take as they are, mapped to short safe ones and back.

Anthropic takes ``^[a-zA-Z0-9_-]{1,64}$`` and Together at most 64 characters: an id outside the pattern is sent
as ``m_`` + 40 hex of its SHA-256, and results are joined back through :func:`reverse_custom_ids` of the
shard's own ids. The mapping is a pure function of the id, so a restarted worker maps it the same way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import msgspec

SAFE_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAPPED_PREFIX = "m_"
_MAPPED_ID = re.compile(r"m_[0-9a-f]{40}")


def provider_custom_id(custom_id: str) -> str:
    """The ``custom_id`` sent to the provider: unchanged when allowed, else ``m_`` + 40 hex of its SHA-256.

    Ids that already look like a mapped id are mapped too, so two client ids can never collide.
    """
    if SAFE_CUSTOM_ID.fullmatch(custom_id) and not _MAPPED_ID.fullmatch(custom_id):
        return custom_id
    return MAPPED_PREFIX + hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def reverse_custom_ids(custom_ids: Iterable[str]) -> dict[str, str]:
    """Provider id -> client id for the ids :func:`provider_custom_id` changes (others map to themselves)."""
    reverse: dict[str, str] = {}
    for custom_id in custom_ids:
        mapped = provider_custom_id(custom_id)
        if mapped != custom_id:
            reverse[mapped] = custom_id
    return reverse


class _Identified(msgspec.Struct):
    custom_id: object = None


_identified = msgspec.json.Decoder(_Identified)


def custom_id_of(line: bytes) -> str | None:
    """The string ``custom_id`` of a JSON line, None if it has none (or is not a JSON object)."""
    try:
        found = _identified.decode(line).custom_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return found if isinstance(found, str) else None


def with_custom_id(line: bytes, custom_id: str) -> bytes:
    """A JSON line (an object) with its ``custom_id`` replaced."""
    value = msgspec.json.decode(line)
    value["custom_id"] = custom_id
    return msgspec.json.encode(value)
