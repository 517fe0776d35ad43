"""Pure transforms of the Gemini batch-mode wire format (no network).

Shared by :mod:`gateway.providers.gemini_batch` and its tests: the state table, reading an Operation,
turning a shard's OpenAI input lines into Gemini requests (the blocking file work runs in a thread),
and turning Gemini results into OpenAI batch output envelopes. Chat lines become GenerateContentRequests,
embeddings lines EmbedContentRequests (:mod:`gateway.translate.gemini_embeddings`); both kinds of batch
share the Operation, the inline ``{"request", "metadata": {"key"}}`` entries and the ``{"key", "request"}``
file lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from gateway.providers.base import PollResult, ProviderBatchState
from gateway.providers.jsonl import encode_line
from gateway.providers.openai_wire import rejected_line
from gateway.providers.retry_after import parse_google_retry_delay
from gateway.translate import MalformedResult, TranslationError, estimated_tokens, vectors_as_base64
from gateway.translate.gemini import chat_to_gemini, gemini_to_chat, google_error
from gateway.translate.gemini_embeddings import embedding_to_gemini, gemini_to_embedding

DISPLAY_PREFIX = "batchgw-"
EMBEDDINGS = "/v1/embeddings"
INLINED_OUTPUTS = ("inlinedResponses", "inlinedEmbedContentResponses")
"""Keys of a batch output holding inline results: the wire's for both kinds of batch, then the name the official
SDK gives an embeddings batch's (it renames the key when the items hold embeddings), in case a service uses it."""

BATCH_STATES: dict[str, ProviderBatchState] = {
    "PENDING": ProviderBatchState.QUEUED,
    "QUEUED": ProviderBatchState.QUEUED,
    "PAUSED": ProviderBatchState.QUEUED,
    "RUNNING": ProviderBatchState.RUNNING,
    "UPDATING": ProviderBatchState.RUNNING,
    "CANCELLING": ProviderBatchState.CANCELLING,
    "SUCCEEDED": ProviderBatchState.COMPLETED,
    "PARTIALLY_SUCCEEDED": ProviderBatchState.COMPLETED,
    "FAILED": ProviderBatchState.FAILED,
    "CANCELLED": ProviderBatchState.CANCELLED,
    "EXPIRED": ProviderBatchState.EXPIRED,
}
"""Batch state without its ``BATCH_STATE_`` (wire) or ``JOB_STATE_`` (SDK) prefix -> gateway state."""


def map_batch_state(state: object) -> ProviderBatchState | None:
    """The gateway state for either spelling of a Gemini batch state; ``None`` if unknown."""
    if not isinstance(state, str):
        return None
    return BATCH_STATES.get(state.upper().removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_"))


# --- reading an Operation -------------------------------------------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def parse_operation(operation: Mapping[str, Any]) -> PollResult:
    """State and counts of a batch Operation; an unknown state falls back on ``done`` and ``error``."""
    metadata = _mapping(operation.get("metadata"))
    raw_state, error = metadata.get("state"), _mapping(operation.get("error"))
    state = map_batch_state(raw_state)
    done = operation.get("done") is True
    if state is None:
        state = ProviderBatchState.RUNNING
        if done:
            state = ProviderBatchState.FAILED if error else ProviderBatchState.COMPLETED
    stats = _mapping(metadata.get("batchStats"))
    message = str(error.get("message") or error.get("code") or "") or None
    return PollResult(
        state=state,
        raw_status=str(raw_state or ("done" if done else "running")),
        total=_count(stats, "requestCount"),
        completed=_count(stats, "successfulRequestCount"),
        failed=_count(stats, "failedRequestCount"),
        error=message if state is ProviderBatchState.FAILED else None,
    )


def operation_output(operation: Mapping[str, Any]) -> Mapping[str, Any]:
    """The results: the Operation's ``response`` first, else ``metadata.output`` (empty if neither has any)."""
    for output in (operation.get("response"), _mapping(operation.get("metadata")).get("output")):
        if isinstance(output, Mapping) and any(key in output for key in (*INLINED_OUTPUTS, "responsesFile")):
            return output
    return {}


def inlined_responses(output: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The ``inlinedResponses.inlinedResponses`` list (``inlinedEmbedContentResponses.inlinedResponses`` of an
    embeddings batch; single nesting tolerated); None for a file output."""
    inlined = next((output[key] for key in INLINED_OUTPUTS if key in output), None)
    inlined = inlined.get("inlinedResponses") if isinstance(inlined, Mapping) else inlined
    return [item for item in inlined if isinstance(item, Mapping)] if isinstance(inlined, list) else None


def operation_model(operation: Mapping[str, Any]) -> str:
    """The batch's model id without its ``models/`` prefix."""
    return str(_mapping(operation.get("metadata")).get("model") or "").removeprefix("models/")


def operation_end(operation: Mapping[str, Any]) -> int:
    """Unix seconds of the batch's ``endTime`` (or ``updateTime``), now if absent."""
    metadata = _mapping(operation.get("metadata"))
    try:
        return int(datetime.fromisoformat(str(metadata.get("endTime") or metadata["updateTime"])).timestamp())
    except (KeyError, ValueError):
        return int(time.time())


def has_display_name(operation: object, display_name: str) -> bool:
    """True if the Operation's batch carries this display name (either JSON spelling)."""
    metadata = _mapping(_mapping(operation).get("metadata"))
    return display_name in (metadata.get("displayName"), metadata.get("display_name"))


def _error_details(body: bytes, kind: str) -> Iterator[Mapping[str, Any]]:
    """The ``error.details`` entries of a Google error body whose ``@type`` is ``google.rpc.<kind>``."""
    try:
        error = _mapping(_mapping(msgspec.json.decode(body)).get("error"))
    except msgspec.DecodeError:
        return
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        detail = _mapping(detail)
        if str(detail.get("@type", "")).endswith(f"google.rpc.{kind}"):
            yield detail


def retry_delay(body: bytes) -> float | None:
    """Seconds from the ``google.rpc.RetryInfo`` detail of a Google error body, if it has one."""
    for detail in _error_details(body, "RetryInfo"):
        delay = detail.get("retryDelay")
        if isinstance(delay, str):
            return parse_google_retry_delay(delay)
    return None


KEY_REFUSED_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
"""``ErrorInfo.reason`` of the 400 Google answers for a key it does not accept (not a 401)."""


def key_refused(body: bytes) -> bool:
    """True if a Google error body says the API key itself was refused."""
    return any(detail.get("reason") in KEY_REFUSED_REASONS for detail in _error_details(body, "ErrorInfo"))


# --- shard translation ----------------------------------------------------------------------------------


class _InputLine(msgspec.Struct):
    custom_id: Any = None
    url: Any = None
    body: Any = None


class _RequestLine(msgspec.Struct):
    key: str
    request: msgspec.Raw


_input_decoder = msgspec.json.Decoder(_InputLine)
_request_decoder = msgspec.json.Decoder(_RequestLine)


def translate_line(raw: bytes) -> tuple[str, dict[str, Any] | TranslationError] | None:
    """The custom_id and GenerateContentRequest, or EmbedContentRequest for an embeddings line (or why there is
    none), of one input line; None if unreadable."""
    try:
        line = _input_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not isinstance(line.custom_id, str) or not line.custom_id:
        return None
    if not isinstance(line.body, dict):
        return line.custom_id, TranslationError("'body' must be an object.", "body")
    try:
        if line.url == EMBEDDINGS:
            return line.custom_id, embedding_to_gemini(line.body)
        return line.custom_id, chat_to_gemini(line.body)
    except TranslationError as exc:
        return line.custom_id, exc


@dataclass
class TranslatedShard:
    """What translating a shard gave: the ids sent (in order), the requests left out, the file written."""

    path: Path | None = None
    size: int = 0
    sent: list[str] = field(default_factory=list)
    rejected: list[tuple[str, TranslationError]] = field(default_factory=list)
    embeddings: dict[str, EmbeddingAsk] = field(default_factory=dict)
    """What each embeddings request sent asked for, by id."""


@dataclass(frozen=True)
class EmbeddingAsk:
    """What reading an embeddings request's answer needs from the request."""

    estimated_tokens: int
    """The text's bytes / 4, rounded up (the gateway's estimate): the tokens counted if Gemini reports none."""
    base64: bool = False
    """The request asked for ``encoding_format: base64``."""


def translate_shard(input_path: Path, dest: Path | None = None) -> TranslatedShard:
    """Translate every line of a shard, writing ``{"key", "request"}`` lines to ``dest`` if given."""
    shard = TranslatedShard(dest)
    with input_path.open("rb") as source, dest.open("wb") if dest else contextlib.nullcontext() as out:
        for raw in source:
            item = translate_line(raw) if raw.strip() else None
            if item is None:
                continue
            custom_id, request = item
            if isinstance(request, TranslationError):
                shard.rejected.append((custom_id, request))
                continue
            shard.sent.append(custom_id)
            if "content" in request:  # an EmbedContentRequest: one text part
                text = request["content"]["parts"][0]["text"]
                estimate = estimated_tokens(len(text.encode()))
                shard.embeddings[custom_id] = EmbeddingAsk(estimate, b'"base64"' in raw and _wants_base64(raw))
            if out is not None:
                encoded = encode_line({"key": custom_id, "request": request})
                out.write(encoded)
                shard.size += len(encoded)
    return shard


class _EncodingBody(msgspec.Struct):
    encoding_format: Any = None


class _EncodingLine(msgspec.Struct):
    body: _EncodingBody | None = None


_encoding_decoder = msgspec.json.Decoder(_EncodingLine)


def _wants_base64(raw: bytes) -> bool:
    try:
        body = _encoding_decoder.decode(raw).body
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return body is not None and body.encoding_format == "base64"


def inline_create_body(path: Path, display_name: str) -> bytes:
    """The create body carrying a translated shard's requests inline, keyed by ``metadata.key``."""
    with path.open("rb") as lines:
        decoded = [_request_decoder.decode(raw) for raw in lines]
    entries = [{"request": line.request, "metadata": {"key": line.key}} for line in decoded]
    batch = {"display_name": display_name, "input_config": {"requests": {"requests": entries}}}
    return msgspec.json.encode({"batch": batch})


def file_create_body(file_name: str, display_name: str) -> bytes:
    """The create body of a batch whose requests are in an uploaded file."""
    return msgspec.json.encode({"batch": {"display_name": display_name, "input_config": {"file_name": file_name}}})


# --- results --------------------------------------------------------------------------------------------


def _seed(batch_id: str, custom_id: str) -> str:
    return hashlib.sha256(f"{batch_id}\x00{custom_id}".encode()).hexdigest()[:24]


def result_envelope(
    custom_id: str,
    result: Mapping[str, Any],
    *,
    batch_id: str,
    model: str,
    created: int,
    embeddings: Mapping[str, EmbeddingAsk] | None = None,
) -> dict[str, Any]:
    """The OpenAI output line for one Gemini result ``{"response": ...}`` or ``{"error": Status}``.

    ``embeddings`` (the shard's embeddings requests, when the shard is known) says which answers are
    embeddings, their vector encoding and token estimate; without it an answer holding ``embedding`` is one."""
    seed = _seed(batch_id, custom_id)
    response, error = result.get("response"), result.get("error")
    request_id = f"req_{seed}"
    unusable = "The provider returned no result."
    ask = embeddings.get(custom_id) if embeddings is not None else None
    embedded = ask is not None if embeddings is not None else isinstance(response, Mapping) and "embedding" in response
    if isinstance(response, Mapping) and embedded:
        try:
            estimate = ask.estimated_tokens if ask else None
            status, body = 200, gemini_to_embedding(response, model=model, estimated_tokens=estimate)
            if ask is not None and ask.base64:
                body = vectors_as_base64(body, "Gemini")
        except MalformedResult as exc:
            status, unusable = 0, f"The provider's answer cannot be used: {exc}."
    elif isinstance(response, Mapping):
        status, body = 200, gemini_to_chat(response, model=model, created=created, fallback_id=f"chatcmpl-{seed}")
        request_id = str(response.get("responseId") or request_id)
    elif isinstance(error, Mapping):
        status, body = google_error(error)
    else:
        status = 0
    if status == 0:
        missing = {"code": "invalid_provider_output", "message": unusable}
        return {"id": f"batch_req_{seed}", "custom_id": custom_id, "response": None, "error": missing}
    envelope = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": f"batch_req_{seed}", "custom_id": custom_id, "response": envelope, "error": None}


def rejected_envelope(custom_id: str, error: TranslationError, *, batch_id: str) -> dict[str, Any]:
    """The OpenAI error line of a request the gateway could not translate (never sent to Gemini)."""
    return rejected_line(custom_id, error, batch_id=batch_id, target="a Gemini model")
