"""OpenAI request bodies -> the InvokeModel bodies of Bedrock's model families, and their answers back.

A Bedrock batch record holds a model's *native* InvokeModel body (``modelInput``) and its native answer
(``modelOutput``), so the translation depends on the family of the model id, found by the table
:data:`FAMILIES`: Claude models take Anthropic's Messages body (through :mod:`gateway.translate.anthropic`,
with ``anthropic_version: bedrock-2023-05-31`` and no ``model``), Titan text embeddings take one
``inputText``, Cohere Embed (v3 and v4) takes up to 96 ``texts``. A model of any other family is :data:`None`
from :func:`family_of`: the adapter refuses to start with it rather than send bodies the model cannot read.

Cohere's answers on Bedrock carry no token counts (InvokeModel reports them in response headers, which a batch
record does not keep): a Cohere answer without Cohere's own ``meta.billed_units`` has no ``usage``, and the
adapter prices it from the job's ``manifest.json.out`` (:attr:`Family.counts_in_manifest`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.translate import EMBEDDING_FORMATS, MalformedResult, TranslationError, single_text
from gateway.translate.anthropic import DEFAULT_MAX_TOKENS, chat_to_messages, message_to_chat

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
"""The ``anthropic_version`` Claude's InvokeModel body on Bedrock carries."""
ANTHROPIC_UNSENT = frozenset({"model", "metadata"})
"""Messages params Bedrock's Claude body does not take: the model is the job's, and it has no metadata."""
TITAN_DIMENSIONS = frozenset({256, 512, 1024})
"""Output sizes Titan Text Embeddings V2 offers."""
TITAN_IGNORED = frozenset({"model", "user"})
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
COHERE_DEFAULT_INPUT_TYPE = "search_document"
"""What a request that does not say gets: a backfill embeds documents (Cohere's v3 and v4 require an input type)."""
COHERE_MAX_TEXTS = 96
"""Texts per InvokeModel body, for v3 and v4 alike."""
COHERE_V3_MAX_CHARS = 2048
"""Characters per text of Embed v3 (Bedrock documents 2,048 "characters" per call beside 96 texts; read here as
per text, unverified). Past it, v3's default ``truncate: NONE`` fails the whole record after the job ran."""
COHERE_V4_DIMENSIONS = frozenset({256, 512, 1024, 1536})
"""``output_dimension`` values Embed v4 offers; v3's vectors have one fixed size."""


def _anthropic_input(body: Mapping[str, Any], default_max_tokens: int) -> dict[str, Any]:
    params = chat_to_messages(body, default_max_tokens=default_max_tokens)
    return {"anthropic_version": ANTHROPIC_VERSION, **{k: v for k, v in params.items() if k not in ANTHROPIC_UNSENT}}


def _anthropic_output(output: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    answer = message_to_chat(output, created=created)
    answer["model"] = answer.get("model") or model
    return answer


def _titan_input(body: Mapping[str, Any], _default_max_tokens: int) -> dict[str, Any]:
    for name, value in body.items():
        if name not in TITAN_IGNORED | {"input", "dimensions", "encoding_format"} and value is not None:
            raise TranslationError(f"'{name}' is not supported by Titan embeddings.", name)
    record: dict[str, Any] = {"inputText": single_text(body, "Titan")}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions not in TITAN_DIMENSIONS:
            sizes = ", ".join(map(str, sorted(TITAN_DIMENSIONS)))
            raise TranslationError(f"'dimensions' must be one of {sizes} for Titan.", "dimensions", "invalid_value")
        record["dimensions"] = dimensions
    return record


def _titan_output(output: Mapping[str, Any], model: str, _created: int) -> dict[str, Any]:
    vector = output.get("embedding")
    tokens = output.get("inputTextTokenCount")
    if not isinstance(vector, list) or not isinstance(tokens, int):
        raise MalformedResult("Titan answer without embedding or inputTextTokenCount")
    data = {"object": "embedding", "index": 0, "embedding": vector}
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": [data], "model": model, "usage": usage}


def _cohere_texts(body: Mapping[str, Any]) -> list[str]:
    text = body.get("input")
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise TranslationError(
            "Cohere embeds texts: 'input' must be a non-empty string or a list of non-empty strings.", "input"
        )
    if len(texts) > COHERE_MAX_TEXTS:
        raise TranslationError(f"Cohere embeds at most {COHERE_MAX_TEXTS} texts per request.", "input")
    if body.get("encoding_format") not in EMBEDDING_FORMATS:
        raise TranslationError("'encoding_format' must be 'float' or 'base64'.", "encoding_format", "invalid_value")
    return texts


def _cohere_record(body: Mapping[str, Any], dimensions_field: str | None) -> dict[str, Any]:
    """A Cohere Embed body; ``input_type`` (Cohere's own field, beside OpenAI's) defaults to ``search_document``."""
    allowed = TITAN_IGNORED | {"input", "encoding_format", "input_type"}
    if dimensions_field:
        allowed |= {"dimensions"}
    for name, value in body.items():
        if name not in allowed and value is not None:
            raise TranslationError(f"'{name}' is not supported by this Cohere Embed model.", name)
    input_type = body.get("input_type") or COHERE_DEFAULT_INPUT_TYPE
    if input_type not in COHERE_INPUT_TYPES:
        kinds = ", ".join(COHERE_INPUT_TYPES)
        raise TranslationError(f"'input_type' must be one of {kinds}.", "input_type", "invalid_value")
    record: dict[str, Any] = {"texts": _cohere_texts(body), "input_type": input_type}
    dimensions = body.get("dimensions")
    if dimensions_field and dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions not in COHERE_V4_DIMENSIONS:
            sizes = ", ".join(map(str, sorted(COHERE_V4_DIMENSIONS)))
            raise TranslationError(f"'dimensions' must be one of {sizes} for Cohere.", "dimensions", "invalid_value")
        record[dimensions_field] = dimensions
    return record


def _cohere_v3_input(body: Mapping[str, Any], _default_max_tokens: int) -> dict[str, Any]:
    record = _cohere_record(body, None)
    if any(len(text) > COHERE_V3_MAX_CHARS for text in record["texts"]):
        raise TranslationError(f"Cohere Embed v3 takes texts of at most {COHERE_V3_MAX_CHARS} characters.", "input")
    return record


def _cohere_v4_input(body: Mapping[str, Any], _default_max_tokens: int) -> dict[str, Any]:
    return _cohere_record(body, "output_dimension")


def _cohere_output(output: Mapping[str, Any], model: str, _created: int) -> dict[str, Any]:
    """``embeddings`` as a list of float vectors (``embeddings_floats``) or under ``float`` (``embeddings_by_type``)."""
    vectors = output.get("embeddings")
    if isinstance(vectors, Mapping):
        vectors = vectors.get("float")
    if not isinstance(vectors, list) or not vectors or not all(isinstance(v, list) for v in vectors):
        raise MalformedResult("Cohere answer without float embeddings")
    data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
    answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
    # Cohere's own API reports meta.billed_units; if Bedrock ever passes it through, it is the count.
    meta = output.get("meta")
    units = meta.get("billed_units") if isinstance(meta, Mapping) else None
    billed = units.get("input_tokens") if isinstance(units, Mapping) else None
    if isinstance(billed, int) and not isinstance(billed, bool) and billed >= 0:
        answer["usage"] = {"prompt_tokens": billed, "total_tokens": billed}
    return answer


@dataclass(frozen=True)
class Family:
    """A Bedrock model family: which endpoint it serves and how its bodies translate."""

    name: str
    endpoint: str
    pattern: re.Pattern[str]
    """Matches the family's model ids, with or without a cross-region profile prefix (``us.``, ``global.``)."""
    to_input: Callable[[Mapping[str, Any], int], dict[str, Any]]
    """OpenAI request body (and the default ``max_tokens``) -> ``modelInput``; raises TranslationError."""
    from_output: Callable[[Mapping[str, Any], str, int], dict[str, Any]]
    """``modelOutput`` (and the model id, the creation time) -> OpenAI response body; raises MalformedResult.
    An answer without ``usage`` is priced from the job's manifest."""
    counts_in_manifest: bool = False
    """Answers may lack token counts: the job's manifest totals are shared among them by the size of their texts."""


FAMILIES: tuple[Family, ...] = (
    Family("anthropic", CHAT, re.compile(r"^(?:[a-z]{2,7}\.)?anthropic\."), _anthropic_input, _anthropic_output),
    Family("titan-embed", EMBEDDINGS, re.compile(r"^amazon\.titan-embed-text"), _titan_input, _titan_output),
    Family(
        "cohere-embed-v3",
        EMBEDDINGS,
        re.compile(r"^(?:[a-z]{2,7}\.)?cohere\.embed-(?:english|multilingual)-v3"),
        _cohere_v3_input,
        _cohere_output,
        counts_in_manifest=True,
    ),
    Family(
        "cohere-embed-v4",
        EMBEDDINGS,
        re.compile(r"^(?:[a-z]{2,7}\.)?cohere\.embed-v4"),
        _cohere_v4_input,
        _cohere_output,
        counts_in_manifest=True,
    ),
)
"""The model families this gateway can send to Bedrock; a model of another family is refused at start."""


def family_of(model_id: str) -> Family | None:
    """The family of a Bedrock model id or ARN (its last path segment is matched), None if unsupported."""
    name = model_id.rsplit("/", 1)[-1]
    return next((family for family in FAMILIES if family.pattern.match(name)), None)


def to_model_input(
    family: Family, endpoint: str, body: Mapping[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """The ``modelInput`` of one OpenAI request; raises :class:`TranslationError` if it cannot be sent."""
    if endpoint != family.endpoint:
        raise TranslationError(f"Bedrock {family.name} models do not serve {endpoint}.", "url")
    return family.to_input(body, default_max_tokens)


def from_model_output(family: Family, output: Any, model: str, created: int) -> dict[str, Any]:
    """The OpenAI response body of one ``modelOutput``; raises :class:`MalformedResult`."""
    if not isinstance(output, Mapping):
        raise MalformedResult("record without an object modelOutput")
    return family.from_output(output, model, created)


def record_error_status(error: Any) -> tuple[int, str]:
    """HTTP status and message of a record's ``error`` (``{"errorCode", "errorMessage"}``)."""
    if not isinstance(error, Mapping):
        return 500, "Bedrock reported a record error without details."
    code = error.get("errorCode")
    try:
        status = int(code) if code is not None and not isinstance(code, bool) else 500
    except (TypeError, ValueError):
        status = 500
    if not 400 <= status <= 599:
        status = 500
    message = error.get("errorMessage")
    return status, str(message) if message else "Bedrock reported a record error without a message."
