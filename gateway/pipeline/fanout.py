"""Stage 4b of the data path: run a shard request by request on a provider without a batch API.

Answers are stored as they arrive in part blobs of the shard (see ``_PartWriter``), so a worker
killed mid-shard loses only the requests in flight (on object storage, at most one second of
answers): on restart, on any node, the parts tell which ``custom_id``s are done and only the others
are sent. Progress counts reach the database every second; a cancel, the end of the completion
window or a hard budget (checked every second with the run's answers counted,
:mod:`gateway.billing.guard`) stops the run, and the shard is collected like any provider batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from gateway.billing import alerts, guard
from gateway.billing.estimate import estimate_body, shard_cost
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard, new_id
from gateway.db.unit_of_work import transaction
from gateway.pipeline import lifecycle
from gateway.pipeline.lifecycle import at, end_shard, fanout_parts_prefix, stop_reason, wait
from gateway.pipeline.results import Usage, decode_result
from gateway.providers.base import ProviderAdapter, ProviderAuthFailed, ProviderUnavailable, SyncRequest
from gateway.routing import health
from gateway.routing.limits import Paced
from gateway.storage import BlobStore
from gateway.storage.local import scratch_file

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
PAUSE_AFTER_UNAVAILABLE_S = 10.0


class _Line(msgspec.Struct):
    custom_id: str
    body: msgspec.Raw


class _Done(msgspec.Struct):
    custom_id: str


def finished_ids(path: Path) -> set[str]:
    """custom_ids answered in a file of result lines (unreadable lines are skipped)."""
    decoder = msgspec.json.Decoder(_Done)
    done: set[str] = set()
    with path.open("rb") as handle:
        for line in handle:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                done.add(decoder.decode(line).custom_id)
    return done


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


async def run(context: GatewayContext, shard: Shard, batch: Batch, lease: Lease) -> None:
    """Shard entry for state ``executing``."""
    if reason := stop_reason(batch):
        await end_shard(context, shard, lease, reason=reason)
        return
    adapter = context.providers.get(shard.provider)
    parts = _PartWriter(context.blobs, fanout_parts_prefix(shard))
    try:
        done = await parts.answered_before()
        async with context.blobs.local_copy(shard.input_key) as input_path:
            requests = pending_requests(input_path, batch.endpoint, done)
            outcome, error = await _execute_all(context, adapter, shard, batch, requests, parts, len(done), lease)
    finally:
        parts.discard()
    if outcome in ("lease_lost", "handed_over"):
        return
    error_text = str(error) if outcome in ("budget", "budget_exceeded") and error is not None else None
    if outcome == "auth_failed" and error is not None:
        await health.auth_failed(context, shard.provider, error)
        await _unavailable(context, shard, batch, lease, failure=str(error), code="auth_failed")
        return
    if outcome == "unavailable":
        await _unavailable(context, shard, batch, lease)
        return
    await health.call_succeeded(context, shard.provider)
    if outcome in ("cancelled", "expired", "budget_exceeded", "budget"):
        await end_shard(context, shard, lease, reason=outcome, error=error_text)
        return
    await end_shard(context, shard, lease, reason="completed")


async def _unavailable(
    context: GatewayContext,
    shard: Shard,
    batch: Batch,
    lease: Lease,
    failure: str | None = None,
    code: str = "provider_unreachable",
) -> None:
    """The provider stopped answering mid-run (or refused the key): move the rest if it has been failing long
    enough and another provider is healthy now, else pause the shard (answers so far are kept either way)."""
    since = shard.unavailable_since or time.time()
    if code == "auth_failed":
        opened = True
    else:
        opened = await health.call_failed(context, shard.provider, f"{shard.provider} unreachable during fan-out")
    if opened or time.time() - since >= context.settings.routing.provider_down_failover_s:
        failure = failure or f"{shard.provider} stayed unreachable during fan-out since {at(since)}"
        verdict = await lifecycle.may_leave_provider(context, batch, shard, failure)
        if verdict.allowed:
            # Answers so far are kept; collection moves the rest (or fails them when pinned).
            await end_shard(context, shard, lease, reason="abandoned", error=verdict.evidence)
            return
    until = time.time() + PAUSE_AFTER_UNAVAILABLE_S * min(8, 1 + shard.attempts)
    problem = "refused the gateway's key" if code == "auth_failed" else "unreachable"
    detail = f"{shard.provider} {problem} since {at(since)}; the shard resumes where it stopped at {at(until)}"
    await wait(
        context,
        shard,
        lease,
        code,
        detail,
        until,
        attempts=shard.attempts + 1,
        unavailable_since=since,
        last_error=f"provider {shard.provider} unreachable; the shard resumes where it stopped",
    )


class _PartWriter:
    """Answers of one fan-out run, stored as part blobs under the shard's parts prefix.

    Where the blob store appends in place (the local folder), every answer is appended to this
    run's part as it arrives, so a killed worker loses only the requests in flight. Otherwise
    (object storage) answers gather in a local scratch file and each :meth:`publish` stores those
    written since the last one as a new part, so a killed worker loses at most one publish
    interval of answers. Either way any worker on any node resumes or collects the shard from the
    parts.
    """

    def __init__(self, blobs: BlobStore, prefix: str) -> None:
        self.blobs = blobs
        self.prefix = prefix
        self.run = f"{int(time.time() * 1000):013d}-{new_id('', 8)}"
        self.appender = blobs.appender(f"{prefix}{self.run}.jsonl")
        self.path = scratch_file(blobs.scratch, suffix=".jsonl")
        self.sink = self.path.open("ab")
        self.published = 0
        self.count = 0

    async def answered_before(self) -> set[str]:
        """custom_ids answered by earlier runs of this shard (from its published parts)."""
        done: set[str] = set()
        async for info in self.blobs.list(self.prefix):
            async with self.blobs.local_copy(info.key) as path:
                done |= await asyncio.to_thread(finished_ids, path)
        return done

    def write(self, line: bytes) -> None:
        if self.appender is not None:
            self.appender.write(line + b"\n")
        else:
            self.sink.write(line + b"\n")

    async def publish(self) -> None:
        """Make the answers so far durable: sync the appended part, or store a new part blob."""
        if self.appender is not None:
            await asyncio.to_thread(self.appender.sync)
            return
        self.sink.flush()
        end = self.sink.tell()
        if end == self.published:
            return
        part = scratch_file(self.blobs.scratch, suffix=".jsonl")
        await asyncio.to_thread(_copy_range, self.path, part, self.published, end)
        self.count += 1
        await self.blobs.put_file(f"{self.prefix}{self.run}-{self.count:06d}.jsonl", part)
        self.published = end

    def discard(self) -> None:
        """Close this run's part and remove the local scratch file."""
        if self.appender is not None:
            self.appender.close()
        self.sink.close()
        self.path.unlink(missing_ok=True)


class _LiveSpend:
    """What the answers of this fan-out run cost so far (they reach the ledger when the shard is collected)."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.answered = 0
        self.cost_usd = 0.0

    def add(self, line: bytes) -> None:
        try:
            item = decode_result(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self.answered += 1
        if item.ok:
            usage = Usage()
            usage.add(item.body)
            self.cost_usd += shard_cost(self.shard, usage.as_dict())[0]


async def _budget_check(context: GatewayContext, batch: Batch, spent: _LiveSpend) -> tuple[str, Exception] | None:
    """Stop the run when a hard budget says so (see :mod:`gateway.billing.guard`), counting this run's answers:
    ``budget`` (spent: the rest waits) or ``budget_exceeded`` (the batch no longer fits: it is stopped)."""
    live = guard.Live(spent.shard, spent.answered, spent.cost_usd)
    async with transaction(context.sessions) as session:
        check = await guard.running_check(session, batch, context.settings.billing, live=live)
    if check.alert is not None:
        alerts.count_fired([check.alert])
    if check.action == "go":
        return None
    log.warning("shard %s: fan-out stopped: %s", spent.shard.id, check.message)
    return ("budget" if check.action == "pause" else "budget_exceeded"), RuntimeError(check.message)


def _copy_range(source: Path, dest: Path, start: int, end: int) -> None:
    with source.open("rb") as reader, dest.open("wb") as writer:
        reader.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = reader.read(min(1024 * 1024, remaining))
            if not chunk:
                break
            writer.write(chunk)
            remaining -= len(chunk)


async def _execute_all(
    context: GatewayContext,
    adapter: ProviderAdapter,
    shard: Shard,
    batch: Batch,
    requests: Iterator[SyncRequest],
    parts: _PartWriter,
    already_done: int,
    lease: Lease,
) -> tuple[str, Exception | None]:
    """Run the requests with the provider's concurrency; return why the run ended (and the error that ended it)."""
    batch_id = batch.id
    stop: asyncio.Event = asyncio.Event()
    reason = {"value": "completed"}
    failure: dict[str, Exception] = {}
    answered = {"count": already_done}
    spent = _LiveSpend(shard)

    async def worker() -> None:
        while not stop.is_set():
            if context.stopping.is_set():
                # This process is stopping: the requests in flight are answered, the rest is left to the worker
                # that takes the shard next, so nothing is sent twice.
                reason["value"] = "handed_over"
                stop.set()
                return
            request = next(requests, None)
            if request is None:
                return
            try:
                line = await adapter.execute(request)
            except ProviderAuthFailed as exc:
                log.error("shard %s: %s", shard.id, exc)
                failure["error"] = exc
                reason["value"] = "auth_failed"
                stop.set()
                return
            except ProviderUnavailable as exc:
                log.warning("shard %s: %s", shard.id, exc)
                reason["value"] = "unavailable"
                stop.set()
                return
            parts.write(line)
            answered["count"] += 1
            spent.add(line)
            crash_point("fanout.after_request")
            freeze_point("fanout.after_request")

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(PROGRESS_EVERY_S)
            if lease.stale:
                reason["value"] = "lease_lost"
                stop.set()
                return
            await parts.publish()
            progress = f"{answered['count']} of {shard.request_count} requests answered"
            paused_s = adapter.limiter.paused_for() if isinstance(adapter, Paced) else 0.0
            if paused_s > 0:
                code = "rate_limited"
                detail = f"{lifecycle.rate_limited_detail(shard.provider, time.time() + paused_s)}: {progress}"
            else:
                code, detail = "provider_turnaround", f"running at {shard.provider}: {progress}"
            async with transaction(context.sessions) as session:
                saved = await shard_db.save_shard(
                    session,
                    shard,
                    lease,
                    progress_completed=answered["count"],
                    wait_code=code,
                    wait_detail=detail,
                )
                if saved:
                    await shard_db.lock_batch(session, batch_id)
                    await shard_db.refresh_batch_counts(session, batch_id)
                current = await repo.get_batch(session, None, batch_id)
            if not saved:
                reason["value"] = "lease_lost"
                stop.set()
                return
            halt = stop_reason(current) if current is not None else None
            if halt:
                reason["value"] = halt
                stop.set()
                return
            check = await _budget_check(context, current or batch, spent)
            if check is not None:
                reason["value"], failure["error"] = check
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
        await parts.publish()
    return reason["value"], failure.get("error")
