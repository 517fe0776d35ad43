"""OpenAI chat and embeddings request bodies -> Mistral's, as tables.

Mistral's chat and embeddings bodies are OpenAI's with a few names changed, and its API refuses fields it
does not know (422 "Extra inputs are not permitted"). So each field is renamed, dropped (OpenAI-only
settings that do not change the answer) or refused with a 400 line for that request (settings whose effect
Mistral cannot give); everything else passes through as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.translate import TranslationError

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"

RENAMED: dict[str, str] = {"max_completion_tokens": "max_tokens", "seed": "random_seed"}
"""OpenAI field -> Mistral's name for the same setting."""
DROPPED = frozenset(
    {"store", "service_tier", "user", "metadata", "stream_options", "prompt_cache_key", "safety_identifier"}
)
"""OpenAI-only settings about billing, storage or tracing: the answer is the same without them."""
REFUSED: dict[str, str] = {
    "logprobs": "Mistral returns no log probabilities.",
    "top_logprobs": "Mistral returns no log probabilities.",
    "logit_bias": "Mistral has no logit bias.",
    "audio": "Mistral chat models give no audio output.",
    "modalities": "Mistral chat models give text only.",
    "web_search_options": "Mistral chat completions have no web search.",
    "reasoning_effort": "Mistral chat completions take no reasoning effort.",
    "verbosity": "Mistral chat completions take no verbosity.",
    "functions": "Mistral takes tools, not the deprecated functions.",
    "function_call": "Mistral takes tool_choice, not the deprecated function_call.",
}
"""OpenAI settings whose effect Mistral cannot give, and why: the request gets a 400 line instead."""
ROLES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
"""OpenAI message role -> Mistral's (Mistral has no ``developer`` role: it is a system message)."""
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "output_dimension", "output_dtype"})
EMBEDDING_RENAMED: dict[str, str] = {"dimensions": "output_dimension"}


def chat_to_mistral(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Mistral chat completion body; raises :class:`TranslationError` for a setting Mistral cannot honour."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in REFUSED:
            if value in (None, False):
                continue
            raise TranslationError(f"'{name}' is not supported by this provider: {REFUSED[name]}", name)
        if name in DROPPED:
            continue
        if name == "messages":
            value = _messages(value)
        out[RENAMED.get(name, name)] = value
    return out


def _messages(messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages  # the provider says what is wrong with it
    translated = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in ROLES:
            raise TranslationError(
                f"Message role {role!r} is not supported by this provider.", f"messages[{index}].role"
            )
        translated.append({**message, "role": ROLES[role]} if isinstance(role, str) else message)
    return translated


def embeddings_to_mistral(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Mistral embeddings body (``dimensions`` is ``output_dimension``); other OpenAI fields are refused."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        name = EMBEDDING_RENAMED.get(name, name)
        if name == "user":
            continue
        if name not in EMBEDDING_FIELDS:
            raise TranslationError(f"'{name}' is not supported by this provider's embeddings.", name)
        out[name] = value
    return out


def to_mistral(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The Mistral body of one request to ``endpoint``."""
    return embeddings_to_mistral(body) if endpoint == EMBEDDINGS else chat_to_mistral(body)
