"""Pure transforms of Bedrock batch inference (no network): job statuses, records in and out, the manifest.

A shard's OpenAI lines become records ``{"recordId", "modelInput"}``. Bedrock's ``recordId`` is an 11-character
alphanumeric string, so each record is named after its line in the shard (``R`` and ten digits) and the
client's ``custom_id`` is found again from the shard input when results are read (:class:`ShardIndex`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.providers.base import PollResult, ProviderBatchState
from gateway.providers.jsonl import encode_line, iter_requests
from gateway.translate import MalformedResult, TranslationError, vectors_as_base64
from gateway.translate.bedrock import Family, from_model_output, record_error_status, to_model_input

JOB_STATUS: dict[str, ProviderBatchState] = {
    "Submitted": ProviderBatchState.QUEUED,
    "Validating": ProviderBatchState.QUEUED,
    "Scheduled": ProviderBatchState.QUEUED,
    "InProgress": ProviderBatchState.RUNNING,
    "Stopping": ProviderBatchState.CANCELLING,
    "Completed": ProviderBatchState.COMPLETED,
    # Not every record ran before the job's timeout: the finished ones are in S3, the rest must move on.
    "PartiallyCompleted": ProviderBatchState.EXPIRED,
    "Expired": ProviderBatchState.EXPIRED,
    "Failed": ProviderBatchState.FAILED,
    "Stopped": ProviderBatchState.CANCELLED,
}
"""Bedrock job status -> gateway state."""
MIN_TIMEOUT_HOURS, MAX_TIMEOUT_HOURS = 24, 168
"""``timeoutDurationInHours`` takes 24 to 168."""
MANIFEST = "manifest.json.out"
OUTPUT_SUFFIX = ".jsonl.out"
JOB_NAME_PREFIX = "batchgw-"
_JOB_ID = re.compile(r"[a-z0-9]{12}")


def record_id(line_number: int) -> str:
    """The ``recordId`` of the shard's line ``line_number`` (1-based)."""
    return f"R{line_number:010d}"


def job_name(submit_token: str) -> str:
    """The job's name: the submit token, by which :meth:`find_submitted` finds it in a listing."""
    return JOB_NAME_PREFIX + submit_token


def timeout_hours(window_s: float) -> int:
    """Whole hours left of the client's window, within Bedrock's 24 to 168."""
    return max(MIN_TIMEOUT_HOURS, min(MAX_TIMEOUT_HOURS, int(window_s // 3600)))


def job_id_of(job_arn: str) -> str:
    """The 12-character id at the end of a job ARN (the name of the job's output folder)."""
    tail = job_arn.rsplit("/", 1)[-1]
    return tail if _JOB_ID.fullmatch(tail) else job_arn


def _count(job: Mapping[str, Any], key: str) -> int:
    value = job.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def parse_job(job: Mapping[str, Any]) -> tuple[PollResult, bool]:
    """The poll result of a job object, and whether its status is one the table knows (unknown: running)."""
    raw_status = job.get("status")
    state = JOB_STATUS.get(raw_status) if isinstance(raw_status, str) else None
    message = job.get("message")
    failed = state is ProviderBatchState.FAILED
    result = PollResult(
        state=state or ProviderBatchState.RUNNING,
        raw_status=str(raw_status),
        total=_count(job, "totalRecordCount"),
        completed=_count(job, "successRecordCount"),
        failed=_count(job, "errorRecordCount"),
        error=(str(message) if message else "the job failed without a message") if failed else None,
    )
    return result, state is not None


# --- shard input -----------------------------------------------------------------------------------------


@dataclass
class ShardIndex:
    """A shard as Bedrock records: each record's client ``custom_id``, the requests never sent and why."""

    custom_ids: dict[str, str] = field(default_factory=dict)
    """``recordId`` -> client ``custom_id`` of every request line, sent or not: a record is joined to its line
    even if a newer gateway would translate that line differently."""
    sent: int = 0
    """Records written (or that would be)."""
    base64: set[str] = field(default_factory=set)
    """``recordId``s of embeddings asked with ``encoding_format: base64``."""
    rejected: list[tuple[str, str, TranslationError]] = field(default_factory=list)
    """``(recordId, custom_id, why)`` of the lines never sent; each gets a 400 line unless a record answers it."""
    size: int = 0
    """Bytes of the records written."""
    known: bool = True
    """False when the shard input is gone: records then keep their ``recordId`` as ``custom_id`` (billing only)."""
    text_bytes: dict[str, int] = field(default_factory=dict)
    """``recordId`` -> UTF-8 bytes of the texts it sends, for families priced from the manifest: each answer's
    share of the job's token count."""
    text_counts: dict[str, int] = field(default_factory=dict)
    """``recordId`` -> how many texts it sends (so how many vectors its answer must hold), for the same families."""


def translate_shard(
    input_path: Path, endpoint: str, family: Family, default_max_tokens: int, dest: Path | None = None
) -> ShardIndex:
    """Read a shard's OpenAI lines as records (written to ``dest`` when given); blocking, so run it in a thread."""
    index = ShardIndex()
    with dest.open("wb") if dest else contextlib.nullcontext() as out:
        for number, custom_id, request in iter_requests(input_path):
            rid = record_id(number)
            index.custom_ids[rid] = custom_id
            try:
                if isinstance(request, TranslationError):
                    raise request
                model_input = to_model_input(family, endpoint, request, default_max_tokens)
            except TranslationError as exc:
                index.rejected.append((rid, custom_id, exc))
                continue
            index.sent += 1
            if request.get("encoding_format") == "base64":
                index.base64.add(rid)
            if family.counts_in_manifest:
                text = request.get("input")  # translation took it: a string or a list of strings
                texts: list[str] = [text] if isinstance(text, str) else list(text or [])
                index.text_bytes[rid] = sum(len(t.encode()) for t in texts)
                index.text_counts[rid] = len(texts)
            if out is not None:
                encoded = encode_line({"recordId": rid, "modelInput": model_input})
                out.write(encoded)
                index.size += len(encoded)
    return index


# --- results ---------------------------------------------------------------------------------------------


class _Record(msgspec.Struct):
    recordId: Any = None  # Bedrock's field names
    modelInput: msgspec.Raw = msgspec.Raw()
    """Kept undecoded: read only for families priced from the manifest."""
    modelOutput: Any = None
    error: Any = None


def _sent_texts(model_input: msgspec.Raw) -> list[str] | None:
    """The ``texts`` a record's echoed ``modelInput`` holds, None if it holds none."""
    try:
        sent = msgspec.json.decode(model_input) if model_input else None
    except msgspec.DecodeError:
        return None
    texts = sent.get("texts") if isinstance(sent, dict) else None
    return texts if isinstance(texts, list) and all(isinstance(t, str) for t in texts) else None


_record_decoder = msgspec.json.Decoder(_Record)


def result_envelope(
    raw: bytes, *, index: ShardIndex, family: Family, model: str, job_id: str, created: int
) -> dict[str, Any]:
    """The OpenAI output line of one ``.jsonl.out`` record; raises :class:`MalformedResult`. For a family priced
    from the manifest, the record's texts (echoed in ``modelInput``) are noted in ``index.text_bytes``."""
    try:
        record = _record_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise MalformedResult("not a JSON record") from None
    custom_id = index.custom_ids.get(record.recordId) if isinstance(record.recordId, str) else None
    if custom_id is None and not index.known and isinstance(record.recordId, str):
        custom_id = record.recordId
    if custom_id is None:
        raise MalformedResult("record with a recordId this shard never sent")
    line_id = f"batch_req_{job_id}_{record.recordId}"
    request_id = f"req_{job_id}_{record.recordId}"
    if record.error is not None or record.modelOutput is None:
        status, message = record_error_status(record.error)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        response = {"status_code": status, "request_id": request_id, "body": body}
        return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
    answer = from_model_output(family, record.modelOutput, model, created)
    if family.counts_in_manifest:
        texts = _sent_texts(record.modelInput) if record.recordId not in index.text_counts else None
        if texts is not None:
            # The record's own texts weigh its share of the manifest's count, even without the shard input.
            index.text_bytes[record.recordId] = sum(len(text.encode()) for text in texts)
            index.text_counts[record.recordId] = len(texts)
        sent = index.text_counts.get(record.recordId)
        if sent is not None and len(answer["data"]) != sent:
            raise MalformedResult(f"{len(answer['data'])} vectors for {sent} texts")
    if record.recordId in index.base64:
        answer = vectors_as_base64(answer, family.name)
    response = {"status_code": 200, "request_id": request_id, "body": answer}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def manifest_tokens(raw: bytes) -> tuple[int, int] | None:
    """Input and output token counts of a ``manifest.json.out``, None if it holds none."""
    try:
        manifest = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(manifest, dict):
        return None
    counts = manifest.get("inputTokenCount"), manifest.get("outputTokenCount")
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        return None
    return counts[0], counts[1]  # type: ignore[return-value]


def response_tokens(envelope: Mapping[str, Any]) -> tuple[int, int]:
    """Input and output tokens an output line's answer reports (0, 0 for an error line)."""
    response = envelope.get("response") or {}
    usage = (response.get("body") or {}).get("usage") if response.get("status_code") == 200 else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split into whole shares proportional to ``weights`` that sum to it exactly (largest remainder;
    equal shares when every weight is 0)."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (total * weights[i]) % whole, reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares
