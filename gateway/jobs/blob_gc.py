"""The blob collector: remove blobs no database row names any more.

Stages write blobs under names that carry their attempt's fencing token and publish them by the row
that names them, so an attempt cut short or fenced off leaves blobs nobody names; finished batches
leave their shard inputs; expired and deleted files leave their content. Every ``blob_gc_interval_s``
a worker lists the store and removes such blobs once they are older than ``blob_gc_grace_s`` (a
writer may still be about to publish a younger one). Removing a blob twice is harmless, so several
workers may collect at once.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from gateway.context import GatewayContext
from gateway.db import blobs as blobs_db
from gateway.db.unit_of_work import reading, transaction
from gateway.storage import BlobInfo

log = logging.getLogger(__name__)

PREFIXES = ("files/", "outputs/", "shards/", "message-batches/")


async def collect_garbage(context: GatewayContext, grace_s: float | None = None) -> int:
    """Remove unnamed blobs older than the grace period; returns how many were removed."""
    grace = context.settings.worker.blob_gc_grace_s if grace_s is None else grace_s
    cutoff = time.time() - grace
    async with transaction(context.sessions) as session:
        expired = await blobs_db.expire_files(session)
    if expired:
        log.info("%d expired file(s) marked deleted", expired)
    removed = 0
    for prefix in PREFIXES:
        old = [info async for info in context.blobs.list(prefix) if info.modified_at <= cutoff]
        for info in await _unnamed(context, prefix, old):
            await context.blobs.delete(info.key)
            removed += 1
    removed += await context.blobs.sweep_partial(cutoff)
    if removed:
        log.info("blob collector removed %d blob(s) no row names or never completed", removed)
    return removed


async def _unnamed(context: GatewayContext, prefix: str, blobs: list[BlobInfo]) -> list[BlobInfo]:
    if not blobs:
        return []
    async with reading(context.sessions) as session:
        if prefix != "shards/":
            named = await blobs_db.named_file_keys(session, [b.key for b in blobs])
            return [b for b in blobs if b.key not in named]
        by_batch: dict[str, list[BlobInfo]] = defaultdict(list)
        for info in blobs:
            by_batch[info.key.split("/", 2)[1] if info.key.count("/") >= 2 else ""].append(info)
        unnamed: list[BlobInfo] = []
        for batch_id, infos in by_batch.items():
            keys, prefixes = await blobs_db.shard_blob_names(session, batch_id)
            unnamed += [i for i in infos if i.key not in keys and not any(i.key.startswith(p) for p in prefixes)]
    return unnamed
