"""Stage 7 of the data path: build the batch's output and error files and end the batch.

Once every shard of a batch is collected (:mod:`gateway.pipeline.collect`), ``run`` concatenates
the shards' output and error blobs into the batch's two files, in shard order, and sets the batch's
final status. A merge cut short runs again: its blobs are named after the batch, and its database
change is one transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from gateway import metrics
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard, StoredFile, new_id, now_s
from gateway.pipeline import failover
from gateway.pipeline.lifecycle import batch_window_closed

log = logging.getLogger(__name__)


async def run(context: GatewayContext, batch: Batch) -> None:
    """Batch entry for stage ``merge``: write the output and error files and end the batch."""
    async with context.sessions() as session:
        shards = list(await shard_db.batch_shards(session, batch.id))
    files: dict[str, StoredFile] = {}
    for kind, attr in (("output", "output_key"), ("error", "error_key")):
        keys = [key for s in shards if (key := getattr(s, attr)) and await context.blobs.size(key) > 0]
        if not keys:
            continue
        file_id = new_id("file-")
        # Named after the batch, not the new id: a merge cut short and run again overwrites its blobs.
        storage_key = f"outputs/{batch.id}/{kind}.jsonl"
        size = await context.blobs.write_stream(storage_key, _concat(context, keys))
        files[kind] = StoredFile(
            id=file_id,
            team_id=batch.team_id,
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            bytes=size,
            storage_key=storage_key,
        )
    crash_point("merge.after_files_written")
    final = final_status(batch, shards)
    async with context.sessions() as session:
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
        )
        if not changed:
            await session.rollback()
            for row in files.values():
                await context.blobs.delete(row.storage_key)
            return
        await session.commit()
    for shard in shards:
        for key in (shard.output_key, shard.error_key):
            if key:
                await context.blobs.delete(key)
    served = Counter({s.provider: s.result_completed for s in shards if s.result_completed})
    if served:
        metrics.record_batch_finished(served.most_common(1)[0][0], time.time() - batch.created_at)
    log.info("batch %s %s", batch.id, final["status"])


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
    provider_failed = [s for s in shards if s.end_reason in failover.PROVIDER_FAILURES and s.result_failed]
    if provider_failed and not any(s.result_completed for s in shards):
        errors = [
            {
                "code": "provider_unavailable",
                "message": s.last_error or f"provider {s.provider} failed",
                "param": None,
                "line": None,
            }
            for s in provider_failed[:10]
        ]
        return {"status": "failed", "failed_at": now, "errors": [*(batch.errors or []), *errors]}
    return {"status": "completed", "completed_at": now}


async def _concat(context: GatewayContext, keys: list[str]) -> Any:
    for key in keys:
        async for chunk in context.blobs.iter_bytes(key):
            yield chunk
