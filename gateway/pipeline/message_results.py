"""Results of a message batch (the Anthropic-compatible endpoint), read from its batch's merged files.

A result line per request, translated as it is read (:func:`gateway.translate.anthropic_clients.output_to_result`):
the output file's lines, then the error file's, then the requests answered ``errored`` at intake. A batch
that ended before all its requests ran (cancelled, expired, or failed before reaching a provider) answers
every request its files do not name from its input: ``canceled``, ``expired`` or ``errored``. Files are
streamed; memory grows only with the ``custom_id``s of such a batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.context import GatewayContext
from gateway.db import message_batches as message_db
from gateway.db import repo
from gateway.db.models import Batch, MessageBatch
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import NotFound
from gateway.providers.jsonl import LineSplitter
from gateway.storage import BlobMissing
from gateway.translate.anthropic_clients import ERROR_TYPE_BY_CODE, errored, output_to_result

log = logging.getLogger(__name__)

ENDED = ("completed", "failed", "expired", "cancelled")
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
CHUNK_BYTES = 256 * 1024


class _Head(msgspec.Struct):
    custom_id: Any = None


_head = msgspec.json.Decoder(_Head)


async def _keys(context: GatewayContext, message: MessageBatch, batch: Batch) -> list[str | None]:
    """Blob keys of the batch's output and error files (None for one that is gone: expired), then of the intake
    errors."""
    keys: list[str | None] = []
    async with reading(context.sessions) as session:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                row = await repo.get_file_any_team(session, file_id)
                keys.append(row.storage_key if row is not None else None)
    if message.intake_errors_key:
        keys.append(message.intake_errors_key)
    return keys


async def check_stored(context: GatewayContext, message: MessageBatch, batch: Batch) -> None:
    """Raise 404 ``content_missing`` when a blob the results are read from is gone (before streaming starts)."""
    for key in await _keys(context, message, batch):
        if key is None or not await context.blobs.exists(key):
            raise NotFound(
                f"The results of message batch '{message_db.public_id(batch.id)}' are no longer stored.",
                code="content_missing",
            )


async def _lines(context: GatewayContext, key: str) -> AsyncIterator[bytes]:
    splitter = LineSplitter()
    async for chunk in context.blobs.iter_bytes(key):
        for line in splitter.feed(chunk):
            if line.strip():
                yield line
    for line in splitter.flush():
        if line.strip():
            yield line


def _unexecuted(batch: Batch) -> dict[str, Any]:
    """The result of a request the batch's files do not name, by how the batch ended."""
    if batch.status == "cancelled":
        return {"type": "canceled"}
    if batch.status == "expired":
        return {"type": "expired"}
    first = (batch.errors or [{}])[0]
    kind = ERROR_TYPE_BY_CODE.get(str(first.get("code")), "invalid_request_error")
    message = str(first.get("message") or "The batch failed before this request ran.")
    return errored("", kind, message)["result"]


async def results(context: GatewayContext, message: MessageBatch, batch: Batch) -> AsyncIterator[dict[str, Any]]:
    """Every request's Anthropic result line, once."""
    keys = await _keys(context, message, batch)
    seen: set[str] | None = None if batch.status == "completed" else set()
    for key in keys:
        if key is None:
            continue  # gone since check_stored looked
        translate = key != message.intake_errors_key
        async for raw in _lines(context, key):
            try:
                line = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                log.warning("message batch %s: skipped a result line that is not JSON", batch.id)
                continue
            result = output_to_result(line) if translate else line
            if seen is not None:
                seen.add(str(result.get("custom_id")))
            yield result
    if seen is None:
        return
    async with reading(context.sessions) as session:
        input_file = await repo.get_file_any_team(session, batch.input_file_id)
    if input_file is None or not await context.blobs.exists(input_file.storage_key):
        return
    unexecuted = _unexecuted(batch)
    async for raw in _lines(context, input_file.storage_key):
        custom_id = _head.decode(raw).custom_id
        if isinstance(custom_id, str) and custom_id not in seen:
            yield {"custom_id": custom_id, "result": unexecuted}


async def result_bytes(context: GatewayContext, message: MessageBatch, batch: Batch) -> AsyncIterator[bytes]:
    """The results as JSONL, in chunks."""
    buffer = bytearray()
    async for result in results(context, message, batch):
        buffer += msgspec.json.encode(result) + b"\n"
        if len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def final_counts(context: GatewayContext, message: MessageBatch, batch: Batch) -> dict[str, int] | None:
    """``request_counts`` of an ended message batch, counted from its results once and then kept; None while
    it runs (Anthropic's counts stay all ``processing`` until the batch ends)."""
    if batch.status not in ENDED:
        return None
    if message.counts is not None:
        return message.counts
    tally: Counter[str] = Counter()
    try:
        async for result in results(context, message, batch):
            tally[str(result.get("result", {}).get("type"))] += 1
    except BlobMissing:
        log.warning("message batch %s: a results file is gone; counts come from the batch", batch.id)
        done = batch.request_completed
        return {"processing": 0, "succeeded": done, "errored": message.request_count - done, "canceled": 0,
                "expired": 0}  # fmt: skip
    counts = {"processing": 0, **{kind: tally[kind] for kind in RESULT_TYPES}}
    counts["canceled"] += max(0, message.request_count - sum(counts.values()))  # never run, named nowhere
    async with transaction(context.sessions) as session:
        await message_db.keep_counts(session, batch.id, counts)
    message.counts = counts
    return counts
