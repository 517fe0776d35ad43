"""Which blobs the database still names: the blob collector removes every other one."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.models import AbandonedProviderBatch, Batch, MessageBatch, Shard, StoredFile
from gateway.pipeline.line_figures import FIGURES_SUFFIX

CHUNK = 500


async def named_file_keys(session: AsyncSession, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` that a live file (upload, output or error file) stores its content or its figures under,
    or a live message batch its intake errors."""
    keys = list(keys)
    figures = {key.removesuffix(FIGURES_SUFFIX): key for key in keys if key.endswith(FIGURES_SUFFIX)}
    if figures:
        listed = set(keys)
        keys += [content for content in figures if content not in listed]
    named: set[str] = set()
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        query = select(StoredFile.storage_key).where(
            col(StoredFile.storage_key).in_(chunk), col(StoredFile.deleted).is_(False)
        )
        named.update((await session.exec(query)).all())
        intake_errors = select(MessageBatch.intake_errors_key).where(
            col(MessageBatch.intake_errors_key).in_(chunk), col(MessageBatch.deleted_at).is_(None)
        )
        named.update(key for key in (await session.exec(intake_errors)).all() if key is not None)
    named.update(key for content, key in figures.items() if content in named)
    return named


async def shard_blob_names(session: AsyncSession, batch_id: str) -> tuple[set[str], set[str]]:
    """Blob keys and key prefixes a batch's shards still need: inputs, results and fan-out parts of unfinished
    shards, results of finished ones until the batch is merged, and inputs of abandoned provider batches not
    yet billed."""
    batch = (await session.exec(select(Batch).where(Batch.id == batch_id))).first()
    if batch is None:
        keys: set[str] = set()
        prefixes: set[str] = set()
    else:
        shards = (await session.exec(select(Shard).where(Shard.batch_id == batch_id))).all()
        keys, prefixes = set(), set()
        merged = batch.stage == "done"
        for shard in shards:
            if not merged:
                keys.update(k for k in (shard.input_key, shard.output_key, shard.error_key) if k)
                if shard.state != "done":
                    prefixes.add(f"shards/{shard.batch_id}/{shard.seq:05d}.fanout/")
    open_rows = (
        await session.exec(
            select(Shard.input_key)
            .join(AbandonedProviderBatch, col(AbandonedProviderBatch.shard_id) == col(Shard.id))
            .where(AbandonedProviderBatch.batch_id == batch_id, AbandonedProviderBatch.state == "open")
        )
    ).all()
    keys.update(open_rows)
    return keys, prefixes


async def expire_files(session: AsyncSession, now: float | None = None) -> int:
    """Mark files past their ``expires_at`` deleted (their content is then collected); returns how many."""
    now = now if now is not None else time.time()
    result = await session.exec(
        update(StoredFile)
        .where(
            col(StoredFile.expires_at).is_not(None),
            col(StoredFile.expires_at) < now,
            col(StoredFile.deleted).is_(False),
        )
        .values(deleted=True)
    )
    return int(result.rowcount or 0)
