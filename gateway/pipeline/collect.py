"""Stage 6 of the data path: collect a finished shard, joining its results on ``custom_id``.

``collect_shard`` turns one finished provider batch (or fan-out run) into the shard's success lines
and error lines (:mod:`gateway.pipeline.joining`), with exactly one line for every request of the shard:
lines the provider sent for unknown or already seen ids are dropped; requests that failed retryably or
were never answered move to a follow-up shard (:mod:`gateway.pipeline.failover`) or, when they may not,
get an error line saying why (cancelled, expired, provider failure). The same transaction closes the
shard, adds its follow-up shards, writes its ledger row (:mod:`gateway.pipeline.ledger`), decides a canary
(:mod:`gateway.pipeline.canary`) and, once no shard of the batch is open, hands the batch to the merge
stage. The blobs an attempt writes carry its fencing token, and only the transaction that closes the
shard, fenced by the same lease, makes them the shard's: an attempt cut short, or one whose lease
was lost, leaves nothing another attempt uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.billing.guard import BUDGET_ERROR
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import billing as billing_db
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard, now_s
from gateway.db.unit_of_work import Rollback, transaction
from gateway.pipeline import canary, failover, ledger, lifecycle
from gateway.pipeline.joining import error_lines, fail_moved, split_results
from gateway.pipeline.lifecycle import (
    at,
    attempt_key,
    batch_window_closed,
    fanout_parts_prefix,
    gather_parts,
    shard_tier,
    stop_reason,
    wait,
)
from gateway.pipeline.results import ShardResults
from gateway.providers.base import (
    BatchUsage,
    CapabilityNotSupported,
    ProviderAuthFailed,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)
from gateway.routing import health
from gateway.storage import BlobMissing
from gateway.storage.local import scratch_file

log = logging.getLogger(__name__)

RESULTS_RETRY_S = 10.0


async def collect_shard(context: GatewayContext, shard: Shard, batch: Batch, lease: Lease) -> None:
    """Shard entry for state ``collecting``: fetch results, split them, move what did not finish, close.

    One transaction closes the shard, adds its follow-up shards and routing decision (see
    :mod:`gateway.pipeline.failover`), records its spend, decides a canary, and hands the batch to the
    merge stage once none of its shards is open.
    """
    scratch = context.blobs.scratch
    raw_path = scratch_file(scratch, suffix=".raw.jsonl")
    moved_path = scratch_file(scratch, suffix=".moved.jsonl")
    as_sent = False
    reported: BatchUsage | None = None
    try:
        if shard.provider_batch_id:
            fetched, reported = await _fetch_results(context, batch, shard, lease, raw_path)
            if fetched == "later":
                return
            raw_available = fetched == "fetched"
            as_sent = context.providers.get(shard.provider).results_as_sent
        else:
            # Fan-out shards published their answers in parts as they ran.
            raw_available = await gather_parts(context.blobs, fanout_parts_prefix(shard), raw_path) > 0
        output_key, error_key = attempt_key(shard, lease, "out.jsonl"), attempt_key(shard, lease, "err.jsonl")
        stopping = stop_reason(batch) is not None
        can_move = failover.may_move(stopping, shard, context.settings.routing.max_request_attempts)
        end_reason = shard.end_reason or "completed"
        if end_reason == "expired" and not batch_window_closed(batch):
            end_reason = "provider_expired"  # the provider's own window ended, not the client's
        move: failover.Move | None = None
        async with (
            context.blobs.local_copy(shard.input_key) as input_path,
            context.blobs.staged(output_key) as output_tmp,
            context.blobs.staged(error_key) as error_tmp,
        ):
            results = await context.cpu.run(
                split_results,
                batch.id,
                input_path,
                raw_path if raw_available else None,
                output_tmp,
                error_tmp,
                moved_path,
                end_reason,
                shard.last_error,
                shard.provider,
                can_move,
                shard_tier(shard),
                as_sent,
            )
            if results.moved:
                move = await failover.plan_move(context, batch, shard, lease, moved_path, results.moved)
                if move.error is not None:
                    shard.last_error = move.error
                    await asyncio.to_thread(
                        fail_moved, batch.id, moved_path, error_tmp, move.error, shard.provider, move.code
                    )
                    results.failed += results.moved
                    results.moved = 0
            crash_point("collect.after_split")
            freeze_point("collect.after_split")
    finally:
        raw_path.unlink(missing_ok=True)
        moved_path.unlink(missing_ok=True)
    unread = ledger.unread_usage(reported, results.usage)
    # The unread answers' requests were left pending, so they moved with the rest when any did.
    rerun = unread is not None and results.unreadable > 0 and results.moved > 0
    closed = await _close(context, shard, batch, lease, results, move, output_key, error_key, unread, rerun)
    if not closed:
        # Another worker owns the shard now: nothing this attempt wrote is used.
        for key in (output_key, error_key, *(plan.key for plan in (move.plans if move else []))):
            await context.blobs.delete(key)
        return
    await context.blobs.delete_prefix(fanout_parts_prefix(shard))


async def _close(
    context: GatewayContext,
    shard: Shard,
    batch: Batch,
    lease: Lease,
    results: ShardResults,
    move: failover.Move | None,
    output_key: str,
    error_key: str,
    unread: dict[str, int] | None = None,
    rerun: bool = False,
) -> bool:
    """The one transaction that makes this attempt's results the shard's; False if the lease was lost.
    ``unread`` and ``rerun``: answers billed but not read (see :func:`ledger.unread_usage`)."""
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            lease,
            state="done",
            result_completed=results.completed,
            result_failed=results.failed,
            result_moved=results.moved,
            progress_completed=0,
            progress_failed=0,
            input_tokens=results.usage.input,
            output_tokens=results.usage.output,
            cached_tokens=results.usage.cached,
            cache_write_tokens=results.usage.cache_write,
            reasoning_tokens=results.usage.reasoning,
            output_key=output_key,
            error_key=error_key,
            finished_at=time.time(),
            end_reason=shard.end_reason,
            last_error=shard.last_error,
            wait_code=None,
            wait_detail=None,
        )
        if not saved:
            raise Rollback
        await shard_db.lock_batch(session, shard.batch_id)
        if move is not None:
            session.add(move.decision)
            if move.code == BUDGET_ERROR and move.error:
                await _note_budget_refusal(session, batch.id, move.error)
            for child in move.shards(batch.id, shard, await shard_db.next_seq(session, batch.id)):
                session.add(child)
        usage = results.usage.as_dict()
        spend = await ledger.record(
            session,
            context,
            batch,
            shard,
            results.completed,
            usage,
            results.sample,
            results.usage.billed_usd,
            unread,
            rerun,
        )
        if shard.canary and (verdict := await canary.evaluate(session, context, batch)) is not None:
            spend.alerts.append(verdict)
        if await shard_db.open_shard_count(session, shard.batch_id) == 0:
            await _to_merge(session, batch.id)
    if not saved:
        return False
    ledger.count(shard, spend, results.completed, results.failed, results.moved, results.usage.as_dict())
    if unread:
        log.warning(
            "shard %s: %s billed %d input and %d output tokens for answers the gateway could not read: $%.6f "
            "recorded%s", shard.id, shard.provider, unread["input"], unread["output"], spend.unread_cost_usd,
            " (their requests run again: paid twice)" if rerun else "",
        )  # fmt: skip
    if move is not None and move.decision.kind == "failover":
        metrics.record_failover(shard.provider, move.decision.chosen_provider, shard.end_reason or "failed")
    if spend.stopped:
        async with transaction(context.sessions) as session:
            await billing_db.wake_open_shards(session, batch.id)
    if spend.wake_workers:
        context.work_available.set()
    log.info(
        "shard %s collected: %d ok, %d failed, %d moved; $%.6f",
        shard.id, results.completed, results.failed, results.moved, spend.cost_usd,
    )  # fmt: skip
    return True


async def _note_budget_refusal(session: Any, batch_id: str, message: str) -> None:
    """Record on the batch that requests were not moved because no placement fit its hard budget."""
    current = await repo.get_batch(session, None, batch_id)
    if current is None:
        return
    error = {"code": BUDGET_ERROR, "message": f"Requests not moved: {message}", "param": None, "line": None}
    await repo.update_batch_if(
        session, batch_id, expected_status=current.status, values={"errors": [*(current.errors or []), error]}
    )


async def _fetch_results(
    context: GatewayContext, batch: Batch, shard: Shard, lease: Lease, dest: Path
) -> tuple[str, BatchUsage | None]:
    """Download a provider batch's results into ``dest``: ``fetched``, with the batch's own total of billed
    tokens where the provider reports one; ``none`` when none will come (the provider refuses for good, or
    stayed unreachable past ``routing.provider_down_failover_s`` while another provider is healthy: the provider
    batch is then abandoned, and billed when it can be read); ``later`` when the provider is rate limiting or
    unreachable for now (the shard waits, saying so)."""
    assert shard.provider_batch_id
    adapter = context.providers.get(shard.provider)
    try:
        async with context.blobs.local_copy(shard.input_key) as input_path:
            reported = await adapter.fetch_results(shard.provider_batch_id, dest, input_path=input_path)
    except ProviderAuthFailed as exc:
        await health.auth_failed(context, shard.provider, exc)
        failure = f"{shard.provider} refused the gateway's key when reading results: {exc}"
        verdict = await lifecycle.may_leave_provider(context, batch, shard, failure)
        if verdict.allowed:
            if not await lifecycle.abandon_provider_batch(context, shard, batch, lease, verdict.evidence):
                return "later", None  # the shard is another worker's now
            shard.end_reason, shard.last_error = "abandoned", verdict.evidence
            return "none", None
        until = time.time() + context.settings.routing.circuit_cooldown_s
        await wait(context, shard, lease, "auth_failed", verdict.evidence, until)
        return "later", None
    except (ProviderRejected, CapabilityNotSupported) as exc:
        log.warning("shard %s: %s refused its results: %s", shard.id, shard.provider, exc)
        return "none", None
    except ProviderRateLimited as exc:
        delay = lifecycle.rate_limited_delay(exc.retry_after_s, RESULTS_RETRY_S)
        detail = lifecycle.rate_limited_detail(shard.provider, time.time() + delay, "result downloads")
        await wait(context, shard, lease, "rate_limited", detail, time.time() + delay)
        return "later", None
    except ProviderUnavailable as exc:
        await health.call_failed(context, shard.provider, exc)
        since = shard.unavailable_since or time.time()
        if time.time() - since >= context.settings.routing.provider_down_failover_s:
            failure = f"{shard.provider} unreachable for its results for {time.time() - since:.0f}s ({exc})"
            verdict = await lifecycle.may_leave_provider(context, batch, shard, failure)
            if verdict.allowed:
                if not await lifecycle.abandon_provider_batch(context, shard, batch, lease, verdict.evidence):
                    return "later", None
                shard.end_reason, shard.last_error = "abandoned", verdict.evidence
                return "none", None
        until = time.time() + lifecycle.jitter(RESULTS_RETRY_S)
        detail = f"results of {shard.provider} batch unreachable since {at(since)}: {exc}; next try at {at(until)}"
        await wait(context, shard, lease, "provider_unreachable", detail, until, unavailable_since=since)
        return "later", None
    return "fetched", reported


async def give_up(
    context: GatewayContext,
    shard: Shard,
    batch: Batch,
    lease: Lease,
    code: str,
    message: str,
    entry: dict[str, object],
) -> None:
    """End a shard whose step cannot succeed (see :mod:`gateway.jobs.failures`).

    A provider batch it may still have running is kept owned (cancelled and billed); a shard that was not
    collecting yet is collected with the error (its requests move elsewhere or get error lines); a shard
    whose collection itself cannot run is closed with error lines for its requests (from its input, when
    that is still stored) and the batch records the error.
    """
    history = {"stage_attempts": shard.stage_attempts + 1, "attempt_log": [*(shard.attempt_log or [])[-19:], entry]}
    running = shard.provider_batch_id and shard.state in ("running", "collecting")
    if running or shard.state == "submitting":
        why = f"its '{shard.state}' step failed: {message}" if running else f"its submit step failed: {message}"
        if not await lifecycle.abandon_provider_batch(context, shard, batch, lease, why):
            return  # the shard is another worker's now
    if shard.state != "collecting":
        async with transaction(context.sessions) as session:
            await shard_db.save_shard(session, shard, lease, **history)
        await lifecycle.end_shard(context, shard, lease, reason="failed", error=message)
        return
    await _abort(context, shard, batch, lease, code, message, history)


async def _abort(
    context: GatewayContext,
    shard: Shard,
    batch: Batch,
    lease: Lease,
    code: str,
    message: str,
    history: dict[str, Any],
) -> None:
    """Close a shard that cannot be collected: every request it holds gets an error line if its input is
    still stored; otherwise the batch's errors say how many requests were lost."""
    error_key = attempt_key(shard, lease, "err.jsonl")
    written = 0
    try:
        async with context.blobs.local_copy(shard.input_key) as input_path, context.blobs.staged(error_key) as tmp:
            text = f"This request's results could not be collected: {message}"
            written = await asyncio.to_thread(error_lines, batch.id, input_path, tmp, code, text, shard.provider)
    except BlobMissing:
        await context.blobs.delete(error_key)
    lost = shard.request_count - written
    detail = f"{shard.request_count} request(s) of a shard at {shard.provider} could not be collected: {message}"
    if lost:
        detail += f" ({lost} of them have no line in the error file: their input is no longer stored)"
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            lease,
            state="done",
            result_completed=0,
            result_failed=shard.request_count,
            result_moved=0,
            progress_completed=0,
            progress_failed=0,
            output_key=None,
            error_key=error_key if written else None,
            finished_at=time.time(),
            end_reason=shard.end_reason or "failed",
            last_error=message,
            wait_code=None,
            wait_detail=None,
            **history,
        )
        if not saved:
            raise Rollback
        await shard_db.lock_batch(session, shard.batch_id)
        current = await repo.get_batch(session, None, batch.id)
        error = {"code": code, "message": detail, "param": None, "line": None}
        if current is not None:
            await repo.update_batch_if(
                session, batch.id, expected_status=current.status, values={"errors": [*(current.errors or []), error]}
            )
        await shard_db.refresh_batch_progress(session, batch.id)
        if await shard_db.open_shard_count(session, shard.batch_id) == 0:
            await _to_merge(session, batch.id)
    if not saved:
        await context.blobs.delete(error_key)
        return
    log.error("shard %s closed without results: %s", shard.id, detail)


async def _to_merge(session: Any, batch_id: str) -> None:
    """All shards are done: the batch goes to ``finalizing`` (unless cancelling) and to the merge stage."""
    now = now_s()
    if not await repo.update_batch_if(
        session,
        batch_id,
        expected_status="in_progress",
        values={"status": "finalizing", "finalizing_at": now, "stage": "merge", "stage_attempts": 0},
    ):
        await repo.update_batch_if(
            session, batch_id, expected_status="cancelling", values={"stage": "merge", "stage_attempts": 0}
        )


__all__ = ["collect_shard", "give_up"]
