"""Stage 4b of the data path: run a shard request by request on a provider without a batch API.

Results are appended to the shard's result blob as they arrive and flushed to the operating
system at once, so a worker killed mid-shard loses only the requests in flight: on restart the
blob tells which ``custom_id``s are done and only the others are sent. Progress counts reach the
database every second; a cancel or the end of the completion window stops the run, and the
shard is collected like any provider batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from gateway.billing.estimate import estimate_body
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard
from gateway.pipeline import failover
from gateway.pipeline.collect import collect_shard, end_shard, raw_result_key, stop_reason
from gateway.providers.base import ProviderAdapter, ProviderUnavailable, SyncRequest
from gateway.routing import health

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
PAUSE_AFTER_UNAVAILABLE_S = 10.0


class _Line(msgspec.Struct):
    custom_id: str
    body: msgspec.Raw


class _Done(msgspec.Struct):
    custom_id: str


def finished_ids(path: Path) -> set[str]:
    """custom_ids already answered in a result blob; a torn last line is cut off first."""
    if not path.exists():
        return set()
    _truncate_torn_tail(path)
    decoder = msgspec.json.Decoder(_Done)
    done: set[str] = set()
    with path.open("rb") as handle:
        for line in handle:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                done.add(decoder.decode(line).custom_id)
    return done


def _truncate_torn_tail(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return
        # Walk back to the last complete line; a crash mid-write leaves a partial one.
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                handle.truncate(position - step + newline + 1)
                return
            position -= step
        handle.truncate(0)


def pending_requests(input_path: Path, endpoint: str, done: set[str]) -> Iterator[SyncRequest]:
    """The shard's requests not answered yet, in input order."""
    decoder = msgspec.json.Decoder(_Line)
    with input_path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            line = decoder.decode(raw)
            if line.custom_id in done:
                continue
            body = bytes(line.body)
            _, input_tokens, output_tokens = estimate_body(body, endpoint)
            yield SyncRequest(
                custom_id=line.custom_id, endpoint=endpoint, body=body, estimated_tokens=input_tokens + output_tokens
            )


async def run(context: GatewayContext, shard: Shard, batch: Batch, owner: str) -> None:
    """Shard entry for state ``executing``."""
    if reason := stop_reason(batch):
        await end_shard(context, shard, batch, owner, reason=reason)
        return
    adapter = context.providers.get(shard.provider)
    result_path = context.blobs.append_path(raw_result_key(shard))
    done = await asyncio.to_thread(finished_ids, result_path)
    with context.blobs.local_path(shard.input_key) as input_path:
        requests = pending_requests(input_path, batch.endpoint, done)
        outcome = await _execute_all(context, adapter, shard, batch.id, requests, result_path, len(done))
    if outcome == "unavailable":
        opened = await health.call_failed(context, shard.provider, f"{shard.provider} unreachable during fan-out")
        since = shard.unavailable_since or time.time()
        down_too_long = opened or time.time() - since >= context.settings.routing.provider_down_failover_s
        if down_too_long and await failover.give_up_on_provider(context, batch, shard):
            # Answers so far are kept; collection moves the rest (or fails them when pinned).
            message = f"{shard.provider} stayed unreachable during fan-out"
            await end_shard(context, shard, batch, owner, reason="abandoned", error=message)
            return
        async with context.sessions() as session:
            await shard_db.save_shard(
                session,
                shard,
                owner,
                attempts=shard.attempts + 1,
                next_action_at=time.time() + PAUSE_AFTER_UNAVAILABLE_S * min(8, 1 + shard.attempts),
                unavailable_since=since,
                last_error=f"provider {shard.provider} unreachable; the shard resumes where it stopped",
            )
            await session.commit()
        return
    await health.call_succeeded(context, shard.provider)
    if outcome in ("cancelled", "expired"):
        await end_shard(context, shard, batch, owner, reason=outcome)
        return
    async with context.sessions() as session:
        await shard_db.save_shard(session, shard, owner, state="collecting", end_reason="completed")
        await session.commit()
    await collect_shard(context, shard, batch, owner)


async def _execute_all(
    context: GatewayContext,
    adapter: ProviderAdapter,
    shard: Shard,
    batch_id: str,
    requests: Iterator[SyncRequest],
    result_path: Path,
    already_done: int,
) -> str:
    """Run the requests with the provider's concurrency; return why the run ended."""
    stop: asyncio.Event = asyncio.Event()
    reason = {"value": "completed"}
    answered = {"count": already_done}
    with result_path.open("ab") as sink:

        async def worker() -> None:
            while not stop.is_set():
                request = next(requests, None)
                if request is None:
                    return
                try:
                    line = await adapter.execute(request)
                except ProviderUnavailable as exc:
                    log.warning("shard %s: %s", shard.id, exc)
                    reason["value"] = "unavailable"
                    stop.set()
                    return
                sink.write(line + b"\n")
                sink.flush()
                answered["count"] += 1
                crash_point("fanout.after_request")

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(PROGRESS_EVERY_S)
                os.fsync(sink.fileno())
                async with context.sessions() as session:
                    await shard_db.save_progress(session, shard.id, answered["count"])
                    await shard_db.lock_batch(session, batch_id)
                    await shard_db.refresh_batch_progress(session, batch_id)
                    current = await repo.get_batch(session, None, batch_id)
                    await session.commit()
                halt = stop_reason(current) if current is not None else None
                if halt:
                    reason["value"] = halt
                    stop.set()

        concurrency = adapter.config.limits.max_concurrency
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            sink.flush()
            os.fsync(sink.fileno())
    return reason["value"]
