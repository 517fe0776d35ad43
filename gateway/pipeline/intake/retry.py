"""Retrying a finished batch's failed requests: a new batch for the same team whose input is the
original lines of the requests that failed, byte for byte."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import Batch, StoredFile, new_id, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import Conflict, not_found
from gateway.pipeline.intake.batches import METADATA_MAX_PAIRS
from gateway.storage import BlobStore

FINISHED = ("completed", "failed", "expired", "cancelled")
RETRY_OF_KEY = "retry_of"


def failed_custom_ids(error_file: Path) -> set[str]:
    """The ``custom_id`` of every line of a batch's error file."""
    ids: set[str] = set()
    with error_file.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                custom_id = json.loads(raw).get("custom_id")
                if isinstance(custom_id, str):
                    ids.add(custom_id)
    return ids


def copy_selected_lines(source: Path, target: Path, wanted: set[str]) -> tuple[int, int]:
    """Copy the input lines whose ``custom_id`` is in ``wanted``, byte for byte; return (lines, bytes)."""
    lines = size = 0
    with source.open("rb") as reader, target.open("wb") as writer:
        for raw in reader:
            if not raw.strip():
                continue
            try:
                custom_id = json.loads(raw).get("custom_id")
            except (ValueError, AttributeError):
                continue
            if custom_id in wanted:
                line = raw if raw.endswith(b"\n") else raw + b"\n"
                writer.write(line)
                lines += 1
                size += len(line)
    return lines, size


async def _build_retry_input(blobs: BlobStore, input_key: str, error_key: str, target_key: str) -> tuple[int, int]:
    async with blobs.local_copy(error_key) as error_path:
        wanted = await asyncio.to_thread(failed_custom_ids, error_path)
    if not wanted:
        return 0, 0
    async with blobs.local_copy(input_key) as input_path, blobs.staged(target_key) as target:
        return await asyncio.to_thread(copy_selected_lines, input_path, target, wanted)


def _retry_metadata(original: dict[str, str] | None, batch_id: str) -> dict[str, str]:
    metadata = {k: v for k, v in (original or {}).items() if k != RETRY_OF_KEY}
    if len(metadata) < METADATA_MAX_PAIRS:
        metadata[RETRY_OF_KEY] = batch_id
    return metadata


async def retry_batch(context: GatewayContext, batch_id: str) -> Batch:
    """A new batch of any team's finished batch's failed requests, in ``validating``.

    404 for an unknown batch; 409 while it runs, when nothing failed, or when its files are gone.
    """
    async with reading(context.sessions) as session:
        original = await repo.get_batch(session, None, batch_id)
        if original is None:
            raise not_found("batch", batch_id)
        if original.status not in FINISHED:
            raise Conflict(
                f"Batch '{batch_id}' is still '{original.status}': retry its failed requests once it has finished.",
                code="batch_not_finished",
            )
        if not original.error_file_id:
            raise Conflict(f"Batch '{batch_id}' has no failed requests to retry.", code="nothing_to_retry")
        input_file = await repo.get_file(session, original.team_id, original.input_file_id)
        error_file = await repo.get_file(session, original.team_id, original.error_file_id)
    if input_file is None or error_file is None or not await context.blobs.exists(input_file.storage_key):
        raise Conflict(f"The input or error file of batch '{batch_id}' is no longer stored.", code="content_missing")
    file_id = new_id("file-")
    key = f"files/{file_id}"
    lines, size = await _build_retry_input(context.blobs, input_file.storage_key, error_file.storage_key, key)
    if lines == 0:
        await context.blobs.delete(key)
        raise Conflict(
            f"None of the failed requests of batch '{batch_id}' were found in its input file.",
            code="nothing_to_retry",
        )
    created_at = now_s()
    window_s = (original.expires_at or created_at) - original.created_at
    new_file = StoredFile(
        id=file_id,
        team_id=original.team_id,
        filename=f"{batch_id}_retry.jsonl",
        purpose="batch",
        bytes=size,
        created_at=created_at,
        expires_at=input_file.expires_at,
        storage_key=key,
        line_count=lines,
    )
    batch = Batch(
        team_id=original.team_id,
        input_file_id=file_id,
        endpoint=original.endpoint,
        completion_window=original.completion_window,
        metadata_=_retry_metadata(original.metadata_, batch_id),
        created_at=created_at,
        expires_at=created_at + max(window_s, 0),
        output_ttl_s=original.output_ttl_s,
    )
    try:
        async with transaction(context.sessions) as session:
            session.add(new_file)
            await session.flush()
            session.add(batch)
    except BaseException:
        await context.blobs.delete(key)
        raise
    context.work_available.set()
    return batch
