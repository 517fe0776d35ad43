"""OpenAI embeddings requests <-> Gemini ``EmbedContentRequest`` / ``SingleEmbedContentResponse`` (pure, no I/O).

Gemini's batch embeds one ``content`` per request, so an OpenAI request embeds one text
(:func:`gateway.translate.single_text`); ``dimensions`` becomes ``outputDimensionality``. The answer
``{"embedding": {"values": [...]}, "tokenCount": n}`` becomes an OpenAI embeddings list whose ``usage`` is
Gemini's ``tokenCount``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.translate import MalformedResult, TranslationError, single_text

IGNORED = frozenset({"model", "user", "encoding_format"})
"""Fields that need no Gemini counterpart (``encoding_format`` is applied to the answer)."""


def embedding_to_gemini(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``EmbedContentRequest`` of an OpenAI embeddings body."""
    for name, value in body.items():
        if name not in IGNORED | {"input", "dimensions"} and value is not None:
            raise TranslationError(f"'{name}' is not supported by Gemini embeddings.", name)
    request: dict[str, Any] = {"content": {"parts": [{"text": single_text(body, "Gemini")}]}}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise TranslationError("'dimensions' must be a positive integer.", "dimensions", "invalid_value")
        request["outputDimensionality"] = dimensions
    return request


def gemini_to_embedding(
    response: Mapping[str, Any], *, model: str, estimated_tokens: int | None = None
) -> dict[str, Any]:
    """The OpenAI embeddings list of one ``SingleEmbedContentResponse``, its ``usage`` Gemini's ``tokenCount``
    (``estimated_tokens`` when Gemini reports none: the answer is kept, since it was paid for). Raises
    :class:`MalformedResult` for an answer without a vector, or without a token count when there is no estimate."""
    embedding = response.get("embedding")
    values = embedding.get("values") if isinstance(embedding, Mapping) else None
    tokens = response.get("tokenCount")
    if isinstance(tokens, str) and tokens.isdigit():  # int64 fields may come as strings in Google's JSON
        tokens = int(tokens)
    if tokens is None:
        tokens = estimated_tokens
    if not isinstance(values, list) or isinstance(tokens, bool) or not isinstance(tokens, int):
        raise MalformedResult("Gemini embedding answer without embedding.values or tokenCount")
    data = {"object": "embedding", "index": 0, "embedding": values}
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": [data], "model": model, "usage": usage}
