"""Pure transforms of the OpenAI Files + Batches wire format (no I/O, no network).

Shared by :mod:`gateway.providers.openai_batch` and its tests. Covers the dialects of the
OpenAI-compatible providers: what departs from OpenAI's own format is a row of :data:`DIALECTS`
(Azure's ``api-key`` header, Groq's windows up to 7 days, Together's upload purpose and missing
``metadata``); what every reader tolerates anyway (capitalised or UPPERCASE statuses, a create answer
wrapped in ``{"job": ...}``, a list answered as a bare array) is folded here for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from gateway.providers.base import BatchUsage, ProviderBatchState
from gateway.translate import MalformedResult, TranslationError

SUBMIT_TOKEN_KEY = "batchgw_submit_token"
SHARD_ID_KEY = "batchgw_shard_id"
UPLOAD_NAME_PREFIX = "batchgw-"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_HOUR = 3600.0
WINDOW_SLACK_S = _HOUR

DialectName = Literal["openai", "azure", "groq", "together"]


@dataclass(frozen=True)
class Dialect:
    """Where one OpenAI-protocol provider departs from OpenAI's own wire format."""

    upload_purpose: str = "batch"
    key_header: str | None = None
    """Header that carries the bare key (Azure's ``api-key``); ``None`` sends ``Authorization: Bearer``."""
    windows: tuple[tuple[float, str], ...] = ((24 * _HOUR, "24h"),)
    """Completion windows the provider accepts, shortest first, as (seconds, value sent)."""
    endpoints: frozenset[str] = frozenset({CHAT, EMBEDDINGS})
    """Batch endpoints the provider serves."""
    keeps_metadata: bool = True
    """False: the provider drops a batch's ``metadata``, so a submit is found again by its upload's name."""
    lists_newest_first: bool = True
    """``GET /batches?limit=100`` answers the newest batches first, one short page: the polls of one tick can
    share it. False where paging or order is undocumented: every poll retrieves its own batch."""
    maps_custom_ids: bool = False
    """The provider takes only short ``custom_id``s (Together: at most 64 characters): longer or unusual ones
    are sent mapped (:mod:`gateway.translate.custom_ids`) and joined back from the shard's own ids."""
    upload_expiry_fields: tuple[str, str] | None = ("expires_after[anchor]", "expires_after[seconds]")
    """Form fields of an upload's expiry (anchor, seconds), so that shard inputs do not pile up at the provider
    (OpenAI keeps a batch input until it is deleted; Azure counts files against a cap of 500, 10,000 with an
    expiry); None where the provider documents none."""

    def completion_window(self, remaining_s: float) -> str:
        """The longest accepted window that fits in what is left of the client's (the shortest if none does).

        A window up to :data:`WINDOW_SLACK_S` longer than what is left still fits: the client's window
        started at its create call, a little before this submit, and a client who asked for 72h should
        get a 72h provider batch, not 48h.
        """
        fitting = [value for seconds, value in self.windows if seconds <= remaining_s + WINDOW_SLACK_S]
        return fitting[-1] if fitting else self.windows[0][1]


DIALECTS: dict[DialectName, Dialect] = {
    "openai": Dialect(),
    # Azure OpenAI v1 (``https://<resource>.openai.azure.com/openai/v1``): the key goes in ``api-key``;
    # ``models`` maps each gateway model to a Global-Batch deployment's name, which is what lines carry.
    "azure": Dialect(key_header="api-key", upload_expiry_fields=("expires_after.anchor", "expires_after.seconds")),
    # Groq takes windows "from 24h to 7d"; its exact grammar is unverified, so only the forms its
    # documentation shows are sent: whole days in hours, and "7d".
    # Its list takes no paging parameters (it may answer the whole history), so polls retrieve.
    "groq": Dialect(
        windows=((24 * _HOUR, "24h"), (48 * _HOUR, "48h"), (72 * _HOUR, "72h"), (168 * _HOUR, "7d")),
        endpoints=frozenset({CHAT}),
        lists_newest_first=False,
        upload_expiry_fields=None,
    ),
    # Together's SDK uploads with purpose "batch-api" (whether plain "batch" works is unverified), and its
    # job object has no ``metadata``: the create body carries only the fields its documentation lists. The
    # paging and order of its list are undocumented, so polls retrieve.
    "together": Dialect(
        upload_purpose="batch-api",
        endpoints=frozenset({CHAT}),
        keeps_metadata=False,
        lists_newest_first=False,
        maps_custom_ids=True,
        upload_expiry_fields=None,
    ),
}
"""Dialect by the ``dialect`` option of an ``openai`` provider."""


UPLOAD_TTL_S = 30 * 24 * 3600
"""Life of a shard input uploaded to a provider that takes an expiry: the longest OpenAI and Azure accept, well past
the longest completion window (7 days)."""


def upload_name(submit_token: str) -> str:
    """The file name a shard is uploaded under: it carries the submit token, so that a provider that drops
    ``metadata`` still lets a crashed submit be found again (by the batch whose input is that file)."""
    return f"{UPLOAD_NAME_PREFIX}{submit_token}.jsonl"


BATCH_STATUS_TABLE: dict[str, ProviderBatchState] = {
    "validating": ProviderBatchState.QUEUED,
    "queued": ProviderBatchState.QUEUED,
    "in_progress": ProviderBatchState.RUNNING,
    "finalizing": ProviderBatchState.RUNNING,
    "cancelling": ProviderBatchState.CANCELLING,
    "canceling": ProviderBatchState.CANCELLING,
    "completed": ProviderBatchState.COMPLETED,
    "failed": ProviderBatchState.FAILED,
    "expired": ProviderBatchState.EXPIRED,
    "cancelled": ProviderBatchState.CANCELLED,
    "canceled": ProviderBatchState.CANCELLED,
}
"""Provider status -> gateway state. Looked up after :func:`_status_key` folding."""


def _status_key(status: str) -> str:
    # Folds "in_progress", "IN_PROGRESS", "InProgress" and "in-progress" onto one key.
    return "".join(ch for ch in status.lower() if ch.isalnum())


_STATUS_LOOKUP = {_status_key(name): state for name, state in BATCH_STATUS_TABLE.items()}


def map_batch_status(status: object) -> ProviderBatchState | None:
    """The gateway state for a provider status string, or ``None`` if the status is unknown."""
    if not isinstance(status, str):
        return None
    return _STATUS_LOOKUP.get(_status_key(status))


def cancel_refusal_is_benign(status: object) -> bool:
    """True if a refused cancel leaves nothing to stop: the batch ended, is cancelling or is finalizing."""
    state = map_batch_status(status)
    if state is None:
        return False
    finalizing = isinstance(status, str) and _status_key(status) == "finalizing"
    return state.is_terminal or state is ProviderBatchState.CANCELLING or finalizing


@dataclass(frozen=True)
class RequestCounts:
    """``request_counts`` of a batch object; absent or malformed fields count as zero."""

    total: int = 0
    completed: int = 0
    failed: int = 0


def _whole(value: object) -> int | None:
    """A count as a batch object writes it (an integer, or a float with no fraction) when at least 0, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _count(value: object) -> int:
    return _whole(value) or 0


def parse_request_counts(batch: Mapping[str, Any]) -> RequestCounts:
    """Read ``request_counts`` from a batch object, tolerating a missing or partial object."""
    counts = batch.get("request_counts")
    if not isinstance(counts, Mapping):
        return RequestCounts()
    return RequestCounts(
        total=_count(counts.get("total")),
        completed=_count(counts.get("completed")),
        failed=_count(counts.get("failed")),
    )


def parse_batch_usage(batch: Mapping[str, Any]) -> BatchUsage | None:
    """A batch object's ``usage`` (OpenAI's total of the batch's billed tokens); None when it has none, or its
    token counts are not whole numbers of at least 0, read as ``request_counts`` are (OpenAI fills it only for
    batches created after 2025-09-07; Groq's and Together's objects have none)."""
    usage = batch.get("usage")
    if not isinstance(usage, Mapping):
        return None
    input_tokens, output_tokens = _whole(usage.get("input_tokens")), _whole(usage.get("output_tokens"))
    if input_tokens is None or output_tokens is None:
        return None
    input_details, output_details = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    cached = input_details.get("cached_tokens") if isinstance(input_details, Mapping) else None
    reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, Mapping) else None
    return BatchUsage(input_tokens, output_tokens, cached=_count(cached), reasoning=_count(reasoning))


def parse_progress(batch: Mapping[str, Any]) -> float | None:
    """Together's ``progress`` (0 to 100) as a share of 0 to 1; None when absent or not a number."""
    value = batch.get("progress")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return None
    return min(1.0, max(0.0, float(value) / 100))


def batch_error_summary(batch: Mapping[str, Any], *, limit: int = 3) -> str | None:
    """A short text of a batch's ``errors.data`` (code, message, line), or Together's ``error`` string."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, Mapping) else errors
    parts: list[str] = []
    entries = [entry for entry in data if isinstance(entry, Mapping)] if isinstance(data, list) else []
    for entry in entries[:limit]:
        code = entry.get("code")
        message = entry.get("message")
        text = ": ".join(str(part) for part in (code, message) if part not in (None, ""))
        line = entry.get("line")
        if isinstance(line, int) and not isinstance(line, bool):
            text = f"{text} (line {line})" if text else f"line {line}"
        if text:
            parts.append(text)
    if len(entries) > limit:
        parts.append(f"and {len(entries) - limit} more")
    if not parts:
        single = batch.get("error")
        if isinstance(single, str) and single:
            return single
        if isinstance(single, Mapping) and single.get("message"):
            return str(single["message"])
        return None
    return "; ".join(parts)


def unwrap_batch(obj: object) -> dict[str, Any]:
    """The batch object of a create/retrieve/cancel answer (Together wraps it as ``{"job": ...}``)."""
    if isinstance(obj, dict):
        job = obj.get("job")
        if "id" not in obj and isinstance(job, dict):
            return job
        return obj
    raise ValueError("batch answer is not a JSON object")


@dataclass(frozen=True)
class BatchPage:
    """One page of ``GET /batches`` (or of ``GET /files``: the envelope is the same)."""

    batches: list[dict[str, Any]]
    has_more: bool
    last_id: str | None


def parse_batch_page(obj: object) -> BatchPage:
    """Read a list envelope ``{"data": [...], "has_more", "last_id"}``; a bare JSON array is one page."""
    if isinstance(obj, list):
        return BatchPage([item for item in obj if isinstance(item, dict)], False, None)
    if not isinstance(obj, dict):
        return BatchPage([], False, None)
    data = obj.get("data")
    batches = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    last_id = obj.get("last_id")
    if not isinstance(last_id, str) or not last_id:
        last = batches[-1].get("id") if batches else None
        last_id = last if isinstance(last, str) else None
    return BatchPage(batches, obj.get("has_more") is True, last_id)


def submit_metadata(submit_token: str, shard_id: str) -> dict[str, str]:
    """The tag stored on every provider batch the gateway creates."""
    return {SUBMIT_TOKEN_KEY: submit_token, SHARD_ID_KEY: shard_id}


def has_submit_token(batch: Mapping[str, Any], submit_token: str) -> bool:
    """True if the batch object carries the gateway's tag with this token."""
    metadata = batch.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get(SUBMIT_TOKEN_KEY) == submit_token


def find_batch_with_token(batches: list[dict[str, Any]], submit_token: str) -> dict[str, Any] | None:
    """The first batch in the list tagged with ``submit_token``."""
    return next((batch for batch in batches if has_submit_token(batch, submit_token)), None)


def find_upload_of(files: list[dict[str, Any]], submit_token: str) -> str | None:
    """The id of the file uploaded for ``submit_token`` (see :func:`upload_name`), if the list holds it."""
    name = upload_name(submit_token)
    for file in files:
        file_id = file.get("id")
        if file.get("filename") == name and isinstance(file_id, str) and file_id:
            return file_id
    return None


def find_batch_on_file(batches: list[dict[str, Any]], file_id: str) -> dict[str, Any] | None:
    """The first batch in the list whose input is the file ``file_id``."""
    return next((batch for batch in batches if batch.get("input_file_id") == file_id), None)


def _line_id(provider_batch_id: str, custom_id: str) -> str:
    digest = hashlib.sha256(f"{provider_batch_id}\x00{custom_id}".encode()).hexdigest()[:24]
    return f"batch_req_{digest}"


def rejected_line(custom_id: str, error: TranslationError, *, batch_id: str, target: str) -> dict[str, Any]:
    """The OpenAI error line of a request the gateway could not translate for ``target`` (never sent)."""
    line_id = _line_id(batch_id, custom_id)
    message = f"This request cannot be sent to {target}: {error}"
    body = {"error": {"message": message, "type": "invalid_request_error", "param": error.param, "code": None}}
    response = {"status_code": 400, "request_id": "req_" + line_id.removeprefix("batch_req_"), "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def _normalise_error(error: object) -> dict[str, Any] | None:
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return {
            "code": code if isinstance(code, str) or code is None else str(code),
            "message": message if isinstance(message, str) else str(message or ""),
        }
    if isinstance(error, str) and error:
        return {"code": None, "message": error}
    return None


class _ProviderLine(msgspec.Struct):
    """A provider result line, decoded only as far as its envelope: the response stays bytes."""

    custom_id: Any = None
    id: Any = None
    response: msgspec.Raw = msgspec.Raw(b"null")
    error: Any = None


_provider_line_decoder = msgspec.json.Decoder(_ProviderLine)


class _AnObject(msgspec.Struct, gc=False):
    """Any JSON object, its members skipped (not read)."""


_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _PlainEnvelope(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A result line that is already the OpenAI envelope, as :func:`normalised_output_line` keeps it: these keys
    only, non-empty ids, an answer object and no error. A decoder of it refuses any other line."""

    id: _NonEmpty
    custom_id: _NonEmpty
    response: _AnObject
    error: None = None


_plain_envelope_decoder = msgspec.json.Decoder(_PlainEnvelope)


def normalised_output_line(raw: bytes, provider_batch_id: str) -> bytes:
    """:func:`normalise_output_line` encoded (without newline), the response passed through as the provider's
    bytes. A line that is already the envelope (string ``id`` and ``custom_id``, a response object, a null
    or absent error, no other keys, no bare CR) is kept as it came: most lines of an OpenAI-protocol result
    file are, and they are neither decoded into a dict nor encoded again.

    Raises :class:`MalformedResult` as :func:`normalise_output_line` does.
    """
    try:
        raw.decode()  # the response is not read here: the line must be UTF-8 for the client's output file
        _plain_envelope_decoder.decode(raw)
        plain = b"\r" not in raw
    except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        plain = False
    if plain:
        return raw.strip()
    return msgspec.json.encode(normalise_output_line(raw, provider_batch_id, decode_response=False))


def normalise_output_line(raw: bytes, provider_batch_id: str, *, decode_response: bool = True) -> dict[str, Any]:
    """Turn one provider result line into the OpenAI envelope ``{id, custom_id, response, error}``.

    Raises :class:`MalformedResult` if the line is not a UTF-8 JSON object with a string ``custom_id``.
    A line with neither a response object nor an error gets an ``invalid_provider_output`` error,
    so the request shows up as failed rather than silently succeeded. Without ``decode_response`` the
    response object is passed through as the provider's bytes (:class:`msgspec.Raw`): the envelope is
    re-encoded, the answer is not decoded and encoded again.
    """
    try:
        raw.decode()  # a skipped value's bytes are not checked by the decoder below; the output must be UTF-8
        line = _provider_line_decoder.decode(raw)
        response: Any = line.response if memoryview(line.response)[:1] == b"{" else None
        # A bare CR is JSON whitespace but ends a line for many readers: such an answer is written compactly.
        if response is not None and (decode_response or b"\r" in raw):
            response = msgspec.json.decode(response)
    except UnicodeDecodeError:
        raise MalformedResult("not valid UTF-8") from None
    except msgspec.DecodeError:
        raise MalformedResult("not valid JSON") from None
    except msgspec.ValidationError:
        raise MalformedResult("not a JSON object") from None
    custom_id, line_id = line.custom_id, line.id
    if not isinstance(custom_id, str) or not custom_id:
        raise MalformedResult("no string custom_id")
    error = _normalise_error(line.error)
    if response is None and error is None:
        error = {"code": "invalid_provider_output", "message": "The provider returned no result."}
    return {
        "id": line_id if isinstance(line_id, str) and line_id else _line_id(provider_batch_id, custom_id),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }


def sync_output_line(
    custom_id: str, status: int, body: bytes, request_id: str | None, clean: Callable[[str], str]
) -> bytes:
    """The output line (without newline) of one synchronous answer, as a provider batch would have written it.

    The message of an error answer goes through ``clean`` (it reaches the client); a body that is not
    a JSON object becomes a ``server_error``.
    """
    try:
        decoded: Any = msgspec.json.decode(body) if body else None
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deeply to read: reported as text
        decoded = None
    if not isinstance(decoded, dict):
        text = clean(body[:500].decode("utf-8", "replace"))
        decoded = {"error": {"message": f"HTTP {status}: {text}", "type": "server_error", "param": None, "code": None}}
    elif not 200 <= status < 300:
        decoded = _clean_error_body(decoded, clean)
    envelope = {
        "id": "",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id or "", "body": decoded},
        "error": None,
    }
    return msgspec.json.encode(envelope)


def _clean_error_body(body: dict[str, Any], clean: Callable[[str], str]) -> dict[str, Any]:
    """The error body with its human text (``error.message``, or a string ``error``/``message``/``detail``) cleaned."""
    cleaned = {key: clean(value) if key in ("error", "message", "detail") and isinstance(value, str) else value
               for key, value in body.items()}  # fmt: skip
    error = cleaned.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        cleaned["error"] = {**error, "message": clean(error["message"])}
    return cleaned
