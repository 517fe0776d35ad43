"""Stage 7 of the data path: build the batch's output and error files and end the batch.

Once every shard of a batch is collected (:mod:`gateway.pipeline.collect`), ``run`` concatenates
the shards' output and error blobs into the batch's two files, in shard order, and sets the batch's
final status. The files are written under names carrying this attempt's fencing token, and the one
transaction that ends the batch (fenced by the same lease) is what publishes them: a merge cut short,
or one whose worker lost its lease, leaves only blobs no row names, which it removes (or the blob
collector does), and never touches the live attempt's files. A shard blob that is gone does not stop
the batch: its requests get error lines (``result_lost``) from the shard's input, and everything else
is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from gateway import metrics
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import abandoned as abandoned_db
from gateway.db import message_batches as message_db
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import DEFAULT_FILE_TTL_S, HELD_BY_MESSAGE_BATCH, Batch, Shard, StoredFile, new_id, now_s
from gateway.db.unit_of_work import Rollback, reading, transaction
from gateway.pipeline.lifecycle import PROVIDER_FAILURE_TEXT, PROVIDER_FAILURES, batch_window_closed
from gateway.pipeline.results import error_line, iter_custom_ids
from gateway.storage import BlobMissing
from gateway.storage.local import scratch_file

log = logging.getLogger(__name__)


async def run(context: GatewayContext, batch: Batch, lease: Lease) -> None:
    """Batch entry for stage ``merge``: write the output and error files and end the batch."""
    async with reading(context.sessions) as session:
        shards = list(await shard_db.batch_shards(session, batch.id))
        # A message batch's results are its own: the Files API neither lists nor deletes them.
        held_by = HELD_BY_MESSAGE_BATCH if await message_db.runs_one(session, batch.id) else None
    lost = [s for s in shards if await _blob_lost(context, s.output_key) or await _blob_lost(context, s.error_key)]
    files: dict[str, StoredFile] = {}
    published = False
    try:
        for kind, attr in (("output", "output_key"), ("error", "error_key")):
            keys = [
                key for s in shards if s not in lost and (key := getattr(s, attr)) and await context.blobs.size(key) > 0
            ]
            extra = lost if kind == "error" else []
            if not keys and not extra:
                continue
            file_id = new_id("file-")
            storage_key = f"outputs/{batch.id}/{kind}.t{lease.token}.jsonl"
            if extra:
                size = await context.blobs.write_stream(storage_key, _concat(context, batch, keys, extra))
            else:  # the common case: the store joins the shards' blobs (on local disk it links them: no copy)
                size = await context.blobs.concat(storage_key, keys)
            if size == 0:
                await context.blobs.delete(storage_key)
                continue
            created_at = now_s()
            files[kind] = StoredFile(
                id=file_id,
                team_id=batch.team_id,
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                bytes=size,
                created_at=created_at,
                # OpenAI's rule: kept 30 days from its creation, or as long as the batch's output_expires_after says.
                expires_at=created_at + (batch.output_ttl_s or DEFAULT_FILE_TTL_S),
                storage_key=storage_key,
                held_by=held_by,
            )
        crash_point("merge.after_files_written")
        freeze_point("merge.after_files_written")
        final = final_status(batch, shards)
        if lost:
            final["errors"] = [*final.get("errors", batch.errors or []), _lost_error(lost)]
        async with transaction(context.sessions) as session:
            for row in files.values():
                session.add(row)
            changed = await repo.update_batch_if(
                session,
                batch.id,
                expected_status=batch.status,
                values={
                    **final,
                    "stage": "done",
                    "output_file_id": files["output"].id if "output" in files else None,
                    "error_file_id": files["error"].id if "error" in files else None,
                },
                lease=lease,
            )
            if not changed:
                # Another worker holds the batch now, or a cancel changed it: this attempt's files are not used
                # (a cancel makes the merge run again with the new status).
                raise Rollback
        if not changed:
            return
        published = True
    finally:
        if not published:
            for row in files.values():
                await context.blobs.delete(row.storage_key)
    # Counted and logged as soon as the end is committed: the clean-up below talks to the blob store and may be
    # slow or fail.
    served = Counter({s.provider: s.result_completed for s in shards if s.result_completed})
    if served:
        metrics.record_batch_finished(served.most_common(1)[0][0], time.time() - batch.created_at)
    log.info("batch %s %s", batch.id, final["status"])
    # The shards' blobs are not needed any more, except the inputs of abandoned provider batches not yet billed.
    async with reading(context.sessions) as session:
        still_needed = await abandoned_db.open_shard_ids(session, batch.id)
    for shard in shards:
        keep = shard.id in still_needed
        for key in (shard.output_key, shard.error_key, None if keep else shard.input_key):
            if key:
                await context.blobs.delete(key)


async def _blob_lost(context: GatewayContext, key: str | None) -> bool:
    return key is not None and not await context.blobs.exists(key)


def _lost_error(lost: list[Shard]) -> dict[str, Any]:
    requests = sum(s.result_completed + s.result_failed for s in lost)
    return {
        "code": "result_lost",
        "message": (
            f"The stored results of {len(lost)} shard(s) ({requests} request(s)) were missing when the batch was "
            "merged; those requests are in the error file with code 'result_lost' where their input was still stored."
        ),
        "param": None,
        "line": None,
    }


def final_status(batch: Batch, shards: list[Shard]) -> dict[str, Any]:
    """How a batch whose shards are all done ends.

    ``cancelled`` after a cancel (or its own cost cap), ``expired`` when its window closed first,
    ``failed`` when no request succeeded because providers failed (with their errors), else
    ``completed``; partial failures are in the error file either way, as with OpenAI.
    """
    now = now_s()
    if batch.status == "cancelling":
        return {"status": "cancelled", "cancelled_at": now}
    if batch_window_closed(batch) and any(s.end_reason == "expired" for s in shards):
        return {"status": "expired", "expired_at": now}
    if any(error.get("code") == "canary_failed" for error in batch.errors or []):
        return {"status": "failed", "failed_at": now}
    provider_failed = [s for s in shards if s.end_reason in PROVIDER_FAILURES and s.result_failed]
    if provider_failed and not any(s.result_completed for s in shards):
        errors = [
            {
                "code": "deadline_missed" if s.end_reason == "behind" else "provider_unavailable",
                "message": s.last_error or f"{s.provider} {PROVIDER_FAILURE_TEXT.get(s.end_reason or '', 'failed')}",
                "param": None,
                "line": None,
            }
            for s in provider_failed[:10]
        ]
        return {"status": "failed", "failed_at": now, "errors": [*(batch.errors or []), *errors]}
    return {"status": "completed", "completed_at": now}


async def give_up(context: GatewayContext, batch: Batch, lease: Lease, code: str, message: str) -> None:
    """End a batch whose merge cannot succeed: it fails with the reason; its shards' results stay stored."""
    error = {"code": code, "message": f"The batch's result files could not be written: {message}", "param": None}
    async with transaction(context.sessions) as session:
        await repo.update_batch_if(
            session,
            batch.id,
            expected_status=batch.status,
            values={
                "status": "failed",
                "failed_at": now_s(),
                "stage": "done",
                "errors": [*(batch.errors or []), {**error, "line": None}],
            },
            lease=lease,
        )


async def _concat(context: GatewayContext, batch: Batch, keys: list[str], lost: list[Shard]) -> AsyncIterator[bytes]:
    async for chunk in context.blobs.chained(keys):
        yield chunk
    for shard in lost:
        path = scratch_file(context.blobs.scratch, suffix=".lost.jsonl")
        try:
            async with context.blobs.local_copy(shard.input_key) as input_path:
                await asyncio.to_thread(_lost_lines, batch.id, shard, input_path, path)
            async for chunk in _read(path):
                yield chunk
        except BlobMissing:
            log.error("batch %s: shard %s lost its results and its input", batch.id, shard.id)
        finally:
            path.unlink(missing_ok=True)


def _lost_lines(batch_id: str, shard: Shard, input_path: Any, dest: Any) -> None:
    message = "This request's stored result was lost before the batch was merged; it may have been answered."
    with open(dest, "wb") as out:
        for custom_id in iter_custom_ids(input_path):
            out.write(error_line(batch_id, custom_id, "result_lost", message, shard.provider) + b"\n")


async def _read(path: Any) -> AsyncIterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, 1024 * 1024):
            yield chunk
