"""Stage 5 of the data path: follow a submitted shard until its provider batch ends.

Polls back off from ``provider_poll_min_s`` to ``provider_poll_max_s``, so the cost grows with the number of
shards in flight, not with requests, yet come at least every tenth of the time the batch has run
(:data:`AGE_SHARE`), except at a provider that announces ended batches by webhook (``webhook_secret_env``):
there the webhook makes the poll due at once, and the poll takes no status read from before it, so polls are
a safety net that starts from ``provider_poll_announced_min_s`` (:func:`lifecycle.first_poll_delay_s`); when the
provider reports progress, the next poll comes when that progress says the batch will be done, if that is
sooner (:func:`next_poll_in`). A poll whose answer (a shared list page) shows other batches of the provider
ended makes their shards due at once. A cancel, the end of the completion window or a hard budget
(:mod:`gateway.billing.guard`: spent, or no longer able to take the batch) is passed on to the provider here
as a cancel; results already finished are kept either way. A provider that answers 429 is waited out (its
Retry-After honoured); one that stays unreachable for ``routing.provider_down_failover_s`` loses the shard
only if another provider is healthy right now (:func:`gateway.pipeline.lifecycle.may_leave_provider`), and the
abandoned provider batch stays owned: cancelled, polled and billed (:mod:`gateway.pipeline.settle`). A
finished provider batch goes to collection (state ``collecting``).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from gateway.billing import alerts, guard
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard
from gateway.db.unit_of_work import transaction
from gateway.pipeline import lifecycle
from gateway.pipeline.lifecycle import at, end_shard, stop_reason, wait
from gateway.providers.base import (
    CapabilityNotSupported,
    PollResult,
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from gateway.routing import health

log = logging.getLogger(__name__)

BUDGET_HALTS = frozenset({"budget", "budget_exceeded"})
"""End reasons of provider batches cancelled for a hard budget (their reason is kept for the error lines)."""
END_REASON_BY_STATE = {
    ProviderBatchState.COMPLETED: "completed",
    ProviderBatchState.FAILED: "failed",
    ProviderBatchState.EXPIRED: "expired",
    ProviderBatchState.CANCELLED: "cancelled",
}

AGE_SHARE = 0.1
"""A running provider batch is polled at least every tenth of the time it has run (then the backoff's maximum),
so noticing its end takes at most about a tenth longer than the batch itself; not at a provider whose webhooks
announce the end."""


async def run(context: GatewayContext, shard: Shard, batch: Batch, lease: Lease) -> None:
    """Shard entry for state ``running``."""
    assert shard.provider_batch_id, "a running shard has a provider batch"
    adapter = context.providers.get(shard.provider)
    halt = stop_reason(batch)
    why: str | None = None
    if halt is None and shard.end_reason is None:
        halt, why = await _budget_halt(context, batch)
    if halt and shard.end_reason is None:
        try:
            await adapter.cancel(shard.provider_batch_id)
        except CapabilityNotSupported:
            pass
        except ProviderError as exc:
            # Said on the batch, so a cancel that waits for an unreachable provider does not read as running.
            failure = f"cancelling the provider batch at {shard.provider} failed: {exc}"
            code = "rate_limited" if isinstance(exc, ProviderRateLimited) else "provider_unreachable"
            await _poll_later(context, shard, lease, error=failure, wait_code=code, wait_detail=f"{failure}; retrying")
            return
        async with transaction(context.sessions) as session:
            await shard_db.save_shard(session, shard, lease, end_reason=halt, last_error=why or shard.last_error)
    try:
        # Not answered by a status read older than the moment the poll fell due (a webhook's wake-up).
        status = await adapter.poll(shard.provider_batch_id, fresh_after=shard.next_action_at)
    except ProviderAuthFailed as exc:
        await health.auth_failed(context, shard.provider, exc)
        await _unreachable(context, shard, batch, lease, exc, code="auth_failed")
        return
    except ProviderRateLimited as exc:
        delay = lifecycle.rate_limited_delay(exc.retry_after_s, context.settings.worker.provider_poll_max_s)
        detail = f"{lifecycle.rate_limited_detail(shard.provider, time.time() + delay)}: {exc}"
        await wait(context, shard, lease, "rate_limited", detail, time.time() + delay)
        return
    except ProviderUnavailable as exc:
        await _unreachable(context, shard, batch, lease, exc)
        return
    except ProviderError as exc:
        # The provider refuses to tell (e.g. 404: its batch is gone): nothing more will come back.
        log.warning("shard %s: %s refused the status read: %s", shard.id, shard.provider, exc)
        await end_shard(context, shard, lease, reason="failed", error=str(exc))
        return
    if status.progress is not None and not (status.completed or status.failed):
        # A percentage, not counts (Together): read as requests done, so the client sees progress and a
        # batch that moves is never taken for stalled. Collection counts what really succeeded.
        status = dataclasses.replace(status, completed=int(status.progress * shard.request_count))
    crash_point("poll.after_status")
    freeze_point("poll.after_status")
    if ended_elsewhere := adapter.take_seen_ended():
        async with transaction(context.sessions) as session:
            await shard_db.poll_now(session, shard, lease, ended_elsewhere)
        if lease.lost:
            return
    if shard.unavailable_since is not None:
        await health.call_succeeded(context, shard.provider)
    if status.state.is_terminal:
        async with transaction(context.sessions) as session:
            await shard_db.save_shard(
                session,
                shard,
                lease,
                state="collecting",
                provider_status=status.raw_status,
                end_reason=shard.end_reason or END_REASON_BY_STATE[status.state],
                last_error=status.error or (shard.last_error if shard.end_reason in BUDGET_HALTS else None),
                next_action_at=time.time(),
                wait_code=None,
                wait_detail=None,
            )
        return
    await _progress(context, shard, batch, lease, status, halt)


async def _budget_halt(context: GatewayContext, batch: Batch) -> tuple[str | None, str | None]:
    """``budget`` when a hard budget of the batch's team is spent (the provider batch is cancelled and its
    unfinished requests wait for the budget), ``budget_exceeded`` when the batch no longer fits one (it is
    stopped), else None; with the reason."""
    async with transaction(context.sessions) as session:
        check = await guard.running_check(session, batch, context.settings.billing)
    if check.alert is not None:
        alerts.count_fired([check.alert])
    if check.action == "go":
        return None, None
    log.warning("batch %s: %s", batch.id, check.message)
    return ("budget" if check.action == "pause" else "budget_exceeded"), check.message


async def _progress(
    context: GatewayContext, shard: Shard, batch: Batch, lease: Lease, status: PollResult, halt: str | None
) -> None:
    now = time.time()
    escalate_at = lifecycle.escalation_at(batch, shard, context.settings.routing.escalate_before_deadline_s)
    behind = escalate_at is not None and now >= escalate_at and shard.end_reason is None and not halt
    due = lifecycle.deadline_at(batch)
    if behind and due is not None and await _escalate(context, shard, lease, due - now):
        return
    progressed = status.completed + status.failed != shard.progress_completed + shard.progress_failed
    counts_changed = (status.completed, status.failed) != (shard.progress_completed, shard.progress_failed)
    last_progress = now if progressed else (shard.last_progress_at or shard.submitted_at or now)
    stall_s = context.settings.routing.stall_timeout_s
    if now - last_progress >= stall_s and not halt:
        if shard.end_reason != "stalled":
            await _give_up_stalled(context, shard, lease, now - last_progress)
        elif now - last_progress >= 2 * stall_s:
            # It did not even honour the cancel: stop waiting for it, but keep owning it (billed if it ends).
            reason = f"{shard.provider} batch made no progress for {now - last_progress:.0f}s and ignored the cancel"
            if await lifecycle.abandon_provider_batch(context, shard, batch, lease, reason):
                await end_shard(context, shard, lease, reason="stalled", error=reason)
            return
    settings = context.settings.worker
    first_s = lifecycle.first_poll_delay_s(context, shard.provider)
    backoff = min(settings.provider_poll_max_s, max(first_s, shard.poll_delay_s * 2))
    done = status.completed + status.failed
    before = shard.progress_completed + shard.progress_failed
    since = shard.last_progress_at or shard.submitted_at
    # A provider that announces ended batches by webhook makes the poll due at once: the age rule is not needed.
    running_s = None if lifecycle.announces_ends(context, shard.provider) else now - (shard.submitted_at or now)
    delay = next_poll_in(backoff, first_s, before, since, done, shard.request_count, now, running_s=running_s)
    detail = (
        f"running at {shard.provider} (status {status.raw_status}): {done} of {shard.request_count} requests done; "
        f"next check at {at(now + delay)}"
    )
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            lease,
            provider_status=status.raw_status,
            progress_completed=status.completed,
            progress_failed=status.failed,
            last_progress_at=last_progress,
            unavailable_since=None,
            poll_delay_s=backoff,
            next_action_at=now + delay,
            wait_code="provider_turnaround",
            wait_detail=detail,
        )
        if saved and counts_changed:  # else the batch's totals are what they were
            await shard_db.lock_batch(session, shard.batch_id)
            await shard_db.refresh_batch_counts(session, shard.batch_id)


def next_poll_in(
    backoff_s: float,
    min_s: float,
    done_before: int,
    since: float | None,
    done_now: int,
    total: int,
    now: float,
    *,
    running_s: float | None = None,
) -> float:
    """Seconds until the next poll: the backoff, or sooner when the provider's own progress says the batch
    ends sooner, and never later than :data:`AGE_SHARE` of ``running_s`` (how long the batch has run).

    From the requests done since the last progress (``done_before`` at ``since``), the rate so far gives
    when the rest will be done; the poll comes a tenth later than that, never sooner than ``min_s``. Once
    every request is done, the polls start again from ``min_s`` and double while the provider writes its
    output. The backoff itself keeps growing, so a provider that reports no progress is asked ever less
    often.
    """
    delay = _by_progress(backoff_s, min_s, done_before, since, done_now, total, now)
    if running_s is None:
        return delay
    return min(delay, max(min_s, AGE_SHARE * running_s))


def _by_progress(
    backoff_s: float, min_s: float, done_before: int, since: float | None, done_now: int, total: int, now: float
) -> float:
    if since is None or now <= since:
        return backoff_s
    if done_now >= total:
        # Every request is done and the provider is writing its output: ask again soon, then less often
        # the longer that takes (``since`` is when the last request was seen done).
        writing_s = now - since if done_now == done_before else 0.0
        return max(min_s, min(backoff_s, writing_s))
    if done_now <= done_before:
        return backoff_s
    rate = (done_now - done_before) / (now - since)
    return max(min_s, min(backoff_s, (total - done_now) / rate * 1.1))


async def _unreachable(
    context: GatewayContext,
    shard: Shard,
    batch: Batch,
    lease: Lease,
    exc: ProviderError,
    code: str = "provider_unreachable",
) -> None:
    """The provider did not answer (connection error, timeout, 5xx) or refused the key: wait, or move the work
    if it has been failing long enough (a refused key: at once) and another provider can take it now."""
    if code != "auth_failed":
        await health.call_failed(context, shard.provider, exc)
    since = shard.unavailable_since or time.time()
    down_s = time.time() - since
    if code == "auth_failed" or down_s >= context.settings.routing.provider_down_failover_s:
        failure = f"{shard.provider} unreachable for {down_s:.0f}s (last error: {exc})"
        provider_batch_id = shard.provider_batch_id
        assert provider_batch_id is not None

        async def poll_again() -> object:
            return await context.providers.get(shard.provider).poll(provider_batch_id)

        verdict = await lifecycle.may_leave_provider(
            context, batch, shard, failure, answers_again=None if code == "auth_failed" else poll_again
        )
        if verdict.allowed:
            if await lifecycle.abandon_provider_batch(context, shard, batch, lease, verdict.evidence):
                await end_shard(context, shard, lease, reason="abandoned", error=verdict.evidence)
            return
        log.info("shard %s: %s", shard.id, verdict.evidence)
    await _poll_later(
        context,
        shard,
        lease,
        error=str(exc),
        unavailable_since=since,
        wait_code=code,
        wait_detail=(
            f"{shard.provider} refused the gateway's key since {at(since)}: {exc}"
            if code == "auth_failed"
            else f"{shard.provider} unreachable since {at(since)}: {exc}"
        ),
    )


async def _give_up_stalled(context: GatewayContext, shard: Shard, lease: Lease, idle_s: float) -> None:
    """Cancel a provider batch that made no progress; what it finished is kept when it ends."""
    assert shard.provider_batch_id
    log.warning("shard %s: no progress at %s for %.0fs; cancelling it", shard.id, shard.provider, idle_s)
    try:
        await context.providers.get(shard.provider).cancel(shard.provider_batch_id)
    except ProviderError as exc:
        log.warning("shard %s: cancelling the stalled batch failed: %s", shard.id, exc)
    async with transaction(context.sessions) as session:
        await shard_db.save_shard(
            session, shard, lease, end_reason="stalled", last_error=f"no progress for {idle_s:.0f}s"
        )


async def _escalate(context: GatewayContext, shard: Shard, lease: Lease, left_s: float) -> bool:
    """Cancel a provider batch still running near the batch's deadline: what it finished is kept when it ends,
    and collection moves the rest to the fastest tier that fits (end reason ``behind``). False when the provider
    cannot cancel a batch at all: the shard is then polled as usual until its batch ends."""
    assert shard.provider_batch_id
    why = f"still running {max(0.0, left_s):.0f}s before the batch's deadline"
    try:
        await context.providers.get(shard.provider).cancel(shard.provider_batch_id)
    except CapabilityNotSupported:
        return False
    except ProviderError as exc:
        await _poll_later(context, shard, lease, error=f"cancelling at {shard.provider} failed: {exc}")
        return True
    log.warning("shard %s: %s at %s; cancelled it to move the rest to a faster tier", shard.id, why, shard.provider)
    async with transaction(context.sessions) as session:
        await shard_db.save_shard(
            session, shard, lease, end_reason="behind", last_error=why, next_action_at=time.time()
        )
    return True


async def _poll_later(
    context: GatewayContext,
    shard: Shard,
    lease: Lease,
    error: str | None = None,
    unavailable_since: float | None = None,
    wait_code: str | None = None,
    wait_detail: str | None = None,
) -> None:
    first_s = lifecycle.first_poll_delay_s(context, shard.provider)
    delay = min(context.settings.worker.provider_poll_max_s, max(first_s, shard.poll_delay_s * 2))
    values: dict[str, object] = {"poll_delay_s": delay, "next_action_at": time.time() + delay}
    if unavailable_since is not None:
        values["unavailable_since"] = unavailable_since
    if error:
        log.warning("shard %s: polling %s failed: %s", shard.id, shard.provider, error)
        values["last_error"] = error[:2000]
    if wait_code:
        values |= {"wait_code": wait_code, "wait_detail": (wait_detail or "")[:2000]}
    async with transaction(context.sessions) as session:
        await shard_db.save_shard(session, shard, lease, **values)
