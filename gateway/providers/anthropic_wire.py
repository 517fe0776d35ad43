"""Pure transforms of Anthropic's Message Batches wire format (no network).

Shared by :mod:`gateway.providers.anthropic_batch` and its tests: the state table, reading a
MessageBatch, writing a create body from a shard's OpenAI input lines (the blocking file work runs
in a thread), turning result lines into OpenAI batch output envelopes, and reading error bodies.
The request and response mapping itself is :mod:`gateway.translate.anthropic`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway.providers.base import PollResult, ProviderBatchState
from gateway.providers.error_text import error_message_from_body
from gateway.providers.http import CreateBody
from gateway.providers.jsonl import iter_lines
from gateway.translate import TranslationError
from gateway.translate.anthropic import (
    MalformedResult,
    chat_to_messages,
    envelope,
    result_to_envelope,
    translation_error_response,
)
from gateway.translate.custom_ids import provider_custom_id

log = logging.getLogger(__name__)

BATCHES = "/v1/messages/batches"
CHAT = "/v1/chat/completions"
API_VERSION = "2023-06-01"
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024**2
STATE_TABLE: dict[str, ProviderBatchState] = {
    "in_progress": ProviderBatchState.RUNNING,
    "canceling": ProviderBatchState.CANCELLING,
    "ended": ProviderBatchState.COMPLETED,
}
"""``processing_status`` -> state; ``ended`` becomes CANCELLED or EXPIRED by :func:`ended_state`."""
CANCEL_IS_MOOT = frozenset({"ended", "canceling"})
"""Processing statuses in which a refused cancel leaves nothing to stop."""


# --- shard input ----------------------------------------------------------------------------------------


class _InputLine(msgspec.Struct):
    custom_id: str
    body: dict[str, Any]


_input_decoder = msgspec.json.Decoder(_InputLine)


def iter_shard(path: Path, default_max_tokens: int) -> Iterator[tuple[str, dict[str, Any] | TranslationError]]:
    """``(custom_id, params or the reason it cannot be sent)`` for each line of an OpenAI-format shard."""
    for number, raw in iter_lines(path):
        try:
            line = _input_decoder.decode(raw)
        except msgspec.MsgspecError:
            log.warning("shard input %s: line %d is not a request line, skipped", path.name, number)
            continue
        try:
            yield line.custom_id, chat_to_messages(line.body, default_max_tokens=default_max_tokens)
        except TranslationError as err:
            yield line.custom_id, err


def write_create_body(shard_path: Path, out: IO[bytes], default_max_tokens: int) -> CreateBody:
    """Write ``{"requests": [...]}`` for the translatable lines of a shard; one request in memory at a time."""
    count = 0
    out.write(b'{"requests":[')
    for custom_id, params in iter_shard(shard_path, default_max_tokens):
        if isinstance(params, TranslationError):
            continue
        out.write(
            (b"," if count else b"")
            + msgspec.json.encode({"custom_id": provider_custom_id(custom_id), "params": params})
        )
        count += 1
    out.write(b"]}")
    out.flush()
    return CreateBody(Path(out.name), out.tell(), count)


@dataclass
class ShardIndex:
    """What fetching results needs from the shard input: the id map and the lines that were never sent."""

    reverse: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[str, TranslationError]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, default_max_tokens: int) -> ShardIndex:
        index = cls()
        for custom_id, params in iter_shard(path, default_max_tokens):
            mapped = provider_custom_id(custom_id)
            if mapped != custom_id:
                index.reverse[mapped] = custom_id
            if isinstance(params, TranslationError):
                index.rejected.append((custom_id, params))
        return index


# --- reading a MessageBatch -----------------------------------------------------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def ended_state(batch: Mapping[str, Any]) -> ProviderBatchState:
    """An ended batch: CANCELLED after a cancel, EXPIRED if the 24h window cut requests off, else COMPLETED."""
    if batch.get("cancel_initiated_at"):
        return ProviderBatchState.CANCELLED
    counts = batch.get("request_counts")
    if isinstance(counts, dict) and _count(counts.get("expired")):
        return ProviderBatchState.EXPIRED
    return ProviderBatchState.COMPLETED


def parse_batch(batch: Mapping[str, Any]) -> PollResult | None:
    """State and counts of a MessageBatch (all ``processing`` until it ends); None for an unknown status."""
    raw_status = batch.get("processing_status")
    state = STATE_TABLE.get(raw_status) if isinstance(raw_status, str) else None
    if state is None:
        return None
    if state is ProviderBatchState.COMPLETED:
        state = ended_state(batch)
    counts = batch.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    names = ("processing", "succeeded", "errored", "canceled", "expired")
    processing, succeeded, errored, canceled, expired = (_count(counts.get(name)) for name in names)
    return PollResult(
        state=state,
        raw_status=str(raw_status),
        total=processing + succeeded + errored + canceled + expired,
        completed=succeeded,
        failed=errored + canceled + expired,
    )


# --- results --------------------------------------------------------------------------------------------


def stable_id(prefix: str, *parts: str) -> str:
    """A deterministic id from its parts, so a refetch writes the same lines."""
    return prefix + hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def result_line(raw: bytes, *, provider_batch_id: str, index: ShardIndex, created: int) -> dict[str, Any]:
    """The OpenAI output envelope of one results line, under the client's ``custom_id``.

    Raises :class:`MalformedResult` (or msgspec's DecodeError) for a line that cannot be used.
    """
    line = msgspec.json.decode(raw)
    sent_id = line.get("custom_id") if isinstance(line, dict) else None
    if not isinstance(sent_id, str) or not sent_id:
        raise MalformedResult("no string custom_id")
    custom_id = index.reverse.get(sent_id, sent_id)
    line_id = stable_id("batch_req_", provider_batch_id, custom_id)
    return result_to_envelope(
        line.get("result"), custom_id=custom_id, line_id=line_id,
        request_id=stable_id("req_", line_id), created=created,
    )  # fmt: skip


def rejected_line(custom_id: str, err: TranslationError, *, provider_batch_id: str) -> dict[str, Any]:
    """The OpenAI error envelope of a request that was never sent because it cannot be translated."""
    line_id = stable_id("batch_req_", provider_batch_id, custom_id)
    response = {**translation_error_response(err), "request_id": stable_id("req_", line_id)}
    return envelope(line_id, custom_id, response, None)


# --- errors ---------------------------------------------------------------------------------------------


def error_detail(body: bytes) -> str:
    """``<error type>: <message>`` of an Anthropic error body (``{"type":"error","error":{type,message}}``)."""
    message = error_message_from_body(body, limit=None)
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return message
    error = decoded.get("error") if isinstance(decoded, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return f"{kind}: {message}" if isinstance(kind, str) and kind else message
