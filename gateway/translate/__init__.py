"""Pure request and response translation between OpenAI format and other providers' formats."""

from __future__ import annotations

import base64
import struct
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


BYTES_PER_TOKEN = 4
"""The gateway's estimate of a text's tokens: its UTF-8 bytes over this, rounded up."""


def estimated_tokens(text_bytes: int) -> int:
    """Input tokens of texts whose answer reports no count (Cohere on Bedrock, Gemini's synchronous embeddings,
    a Gemini batch answer without ``tokenCount``): their UTF-8 bytes / 4, rounded up."""
    return -(-text_bytes // BYTES_PER_TOKEN)


EMBEDDING_FORMATS = (None, "float", "base64")
"""``encoding_format`` values of an OpenAI embeddings request (None: float)."""


def single_text(body: Mapping[str, Any], provider: str) -> str:
    """The one text of an OpenAI embeddings request, for providers that embed one text per request: a
    non-empty string, or a list of one; raises :class:`TranslationError` otherwise."""
    text = body.get("input")
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str) or not text:
        raise TranslationError(
            f"{provider} embeds one text per request: 'input' must be a non-empty string (or a list of one).", "input"
        )
    if body.get("encoding_format") not in EMBEDDING_FORMATS:
        raise TranslationError("'encoding_format' must be 'float' or 'base64'.", "encoding_format", "invalid_value")
    return text


def vectors_as_base64(answer: dict[str, Any], provider: str) -> dict[str, Any]:
    """An OpenAI embeddings answer with its vectors in OpenAI's ``base64`` encoding (little-endian float32)."""
    for item in answer["data"]:
        vector = item["embedding"]
        try:
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        except struct.error:
            raise MalformedResult(f"{provider} embedding with a value that is not a number") from None
    return answer
