"""The deterministic model every emulated protocol answers with, and the ids derived from it.

text_tokens(t) = ceil(len(t) / 4); prompt tokens = ceil(characters of all message texts / 4) + 3 per message.
The reply is "Echo: " + the last user message (first 200 characters), cut before the first stop string found
in it (finish_reason "stop"), then cut to max_tokens * 4 characters when it has more than max_tokens tokens
(finish_reason "length", completion_tokens = max_tokens). Completion tokens = text_tokens(reply).
Every protocol shares it, so the same prompt gets the same text and token counts whichever one is spoken.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Sequence
from typing import Literal

import msgspec

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
REPLY_PREFIX = "Echo: "
ECHO_MAX_CHARS = 200


def text_tokens(text: str) -> int:
    """Tokens of a text for the emulated model: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(message_texts: Sequence[str]) -> int:
    """Prompt tokens of a conversation: ``ceil(sum of characters / 4) + 3 * number of messages``."""
    return text_tokens("".join(message_texts)) + TOKENS_PER_MESSAGE * len(message_texts)


class Reply(msgspec.Struct, frozen=True):
    """What the emulated model answers to one conversation."""

    content: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


def model_reply(
    message_texts: Sequence[str], echo: str, max_tokens: int | None = None, stop: Sequence[str] = ()
) -> Reply:
    """The deterministic answer to a conversation whose last user text is ``echo``."""
    content = REPLY_PREFIX + echo[:ECHO_MAX_CHARS]
    cuts = [content.find(s) for s in stop if s and s in content]
    if cuts:
        content = content[: min(cuts)]
    tokens = text_tokens(content)
    finish: Literal["stop", "length"] = "stop"
    if max_tokens is not None and tokens > max_tokens:
        content, tokens, finish = content[: max_tokens * CHARS_PER_TOKEN], max_tokens, "length"
    return Reply(content, finish, prompt_tokens(message_texts), tokens)


def embedding_vector(text: str, dimensions: int = 8) -> list[float]:
    """A deterministic vector with values in [-1, 1] derived from the text's hash."""
    values: list[float] = []
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{len(values)}:{text}".encode()).digest()
        values.extend(round(b / 127.5 - 1.0, 6) for b in digest)
    return values[:dimensions]


def pack_floats(values: Sequence[float]) -> bytes:
    """Little-endian float32 bytes, the payload of ``encoding_format="base64"`` embeddings."""
    return struct.pack(f"<{len(values)}f", *values)


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key; ``fail_fraction`` fails the custom_ids below it."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def stable_id(prefix: str, *parts: str, length: int = 24) -> str:
    """A deterministic id such as ``chatcmpl-…`` from the given parts."""
    return prefix + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def random_id(prefix: str, length: int = 24) -> str:
    """A fresh random id such as ``file-…``, for objects a provider would number itself."""
    return prefix + secrets.token_hex(length // 2)


POISON_NESTING = msgspec.Raw(b"[" * 5000 + b"]" * 5000)
"""Valid JSON nested 5,000 arrays deep, deeper than any decoder's recursion limit: the ``nested_output_line`` fault."""
