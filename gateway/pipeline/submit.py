"""Stage 4 of the data path: hand a queued shard to its provider, exactly once.

The intent (state ``submitting``, with a fresh submit token) is committed before the provider is
called, and the provider batch is tagged with that token. A shard found in ``submitting`` afterwards
(a retry, or a worker killed or frozen mid-call) is first looked up at the provider by its token; only
when nothing is found is a new token committed and the shard submitted again. A worker that learns
after the provider's answer that it lost its lease hands the provider batch it created to
:mod:`gateway.pipeline.settle` (cancelled and billed, never used), so a frozen worker that wakes up
cannot leave a second, unowned provider batch running. The lease is checked again right before the
create call, after the upload: a worker frozen mid-upload that wakes up creates nothing.

Shards of providers without a batch API go to state ``executing`` (:mod:`gateway.pipeline.fanout`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from gateway.billing import alerts, guard
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import abandoned as abandoned_db
from gateway.db import billing as billing_db
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard, new_id
from gateway.db.unit_of_work import reading, transaction
from gateway.pipeline import lifecycle
from gateway.pipeline.lifecycle import at, end_shard, jitter, stop_reason, wait
from gateway.providers.base import (
    CapabilityNotSupported,
    ProviderAuthFailed,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    SubmitWithdrawn,
)
from gateway.providers.config import ProviderLimits
from gateway.routing import health

log = logging.getLogger(__name__)

CAPACITY_RETRY_S = 2.0
BUDGET_RECHECK_S = 5.0
COLLECT_RECHECK_S = 0.5
"""A shard waiting for its batch's finished shard to be collected (hard budgets) looks again this soon."""
CANARY_HOLD_RECHECK_S = 3600.0
"""A shard held with its batch's canary looks again this often (a release or a cancel wakes it at once)."""
MAX_SUBMIT_BACKOFF_S = 120.0
RATE_LIMIT_FALLBACK_S = 10.0


async def run(context: GatewayContext, shard: Shard, batch: Batch, lease: Lease) -> None:
    """Shard entry for states ``queued`` and ``submitting``."""
    if reason := stop_reason(batch):
        await end_shard(context, shard, lease, reason=reason)
        return
    recovering = shard.state == "submitting"
    if not recovering:
        if await _budget_paused(context, shard, batch, lease):
            return
        if await health.circuit_of(context, shard.provider) == "open":
            await _leave_open_circuit(context, shard, batch, lease)
            return
    adapter = context.providers.get(shard.provider)
    if adapter.executes_locally:
        async with transaction(context.sessions) as session:
            await shard_db.save_shard(
                session, shard, lease, state="executing", submitted_at=time.time(), wait_code=None, wait_detail=None
            )
        return
    if not recovering:
        if not await _reserve_capacity(context, shard, lease):
            return
        # Checked again with the reservation committed: a shard of the batch that finished since the first
        # check (which may have freed this very slot) is now seen being collected, or the stop it led to.
        if await _budget_paused(context, shard, batch, lease, reserved=True):
            return
    try:
        found = await adapter.find_submitted(shard.submit_token) if recovering else None
        if found is None:
            if recovering and not await _new_token(context, shard, lease):
                return
            if lease.stale:
                return  # frozen past the lease: another worker may be submitting this shard now
            lease.kept_on_stop = True
            found = await _create(context, shard, batch, lease)
        else:
            log.info("shard %s: found its provider batch %s after a restart", shard.id, found.provider_batch_id)
        crash_point("submit.after_provider_create")
        freeze_point("submit.after_provider_create")
    except SubmitWithdrawn as exc:
        log.info("%s: its worker's lease was not renewed in time; whoever holds the shard next submits it", exc)
        return
    except ProviderAuthFailed as exc:
        await health.auth_failed(context, shard.provider, exc)
        why = f"{shard.provider} refused the key: {exc}"
        if recovering and not await lifecycle.abandon_provider_batch(context, shard, batch, lease, why):
            return
        await _leave_open_circuit(context, shard, batch, lease, failure=str(exc), code="auth_failed")
        return
    except (ProviderRejected, CapabilityNotSupported) as exc:
        # Another provider may accept it: collection moves the requests to the next candidate.
        log.warning("shard %s rejected by %s: %s", shard.id, shard.provider, exc)
        await end_shard(context, shard, lease, reason="failed", error=f"{shard.provider} refused it: {exc}")
        return
    except ProviderRateLimited as exc:
        # Alive and asking for patience: wait it out, never move the work because of it.
        delay = lifecycle.rate_limited_delay(exc.retry_after_s, RATE_LIMIT_FALLBACK_S)
        detail = f"{lifecycle.rate_limited_detail(shard.provider, time.time() + delay)}: {exc}"
        await wait(context, shard, lease, "rate_limited", detail, time.time() + delay, last_error=str(exc)[:2000])
        return
    except ProviderUnavailable as exc:
        await _unavailable(context, shard, batch, lease, exc, recovering)
        return
    # The provider batch exists: its id is written before anything else, and a worker stopping meanwhile
    # waits for that one short transaction (without it, a kind that cannot find it by tag would run it twice).
    record = asyncio.ensure_future(_record_submitted(context, shard, batch, lease, found))
    try:
        await asyncio.shield(record)
    except asyncio.CancelledError:
        await record
        raise
    lease.kept_on_stop = False
    await health.call_succeeded(context, shard.provider)


async def _create(context: GatewayContext, shard: Shard, batch: Batch, lease: Lease) -> SubmitResult:
    """Create the provider batch. If the stage is cancelled mid-call (its lease was lost), the provider batch
    may exist: it is registered as an orphan, to be found by its token and cancelled unless adopted."""
    adapter = context.providers.get(shard.provider)
    try:
        async with context.blobs.local_copy(shard.input_key) as path:
            return await adapter.submit(
                ShardSubmission(
                    shard_id=shard.id,
                    submit_token=shard.submit_token,
                    endpoint=batch.endpoint,
                    provider_model=shard.provider_model,
                    input_path=path,
                    request_count=shard.request_count,
                    window_s=lifecycle.window_left_s(batch),
                    may_create=functools.partial(_still_owned, lease),
                )
            )
    except asyncio.CancelledError:
        if lease.lost:
            await _register_orphan(context, shard, batch, None, "its worker lost the lease during the create call")
        raise


def _still_owned(lease: Lease) -> bool:
    """Asked by the adapter right before its create call (after an upload that may have taken long):
    a worker frozen or cut off past its lease must not create what the shard's new owner creates too."""
    freeze_point("submit.before_provider_create")
    return not lease.stale


async def _register_orphan(
    context: GatewayContext, shard: Shard, batch: Batch, provider_batch_id: str | None, why: str
) -> None:
    async with transaction(context.sessions) as session:
        await abandoned_db.register(session, shard, batch, why, provider_batch_id=provider_batch_id, origin="orphan")
    log.warning("shard %s: provider batch at %s may be orphaned (%s)", shard.id, shard.provider, why)


async def _new_token(context: GatewayContext, shard: Shard, lease: Lease) -> bool:
    """Commit a fresh submit token before submitting again, so that a provider batch created under the
    old one (by a worker that lost its lease) is told apart from this attempt's."""
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(session, shard, lease, submit_token=new_id("", 32))
    return saved


async def _unavailable(
    context: GatewayContext, shard: Shard, batch: Batch, lease: Lease, exc: ProviderUnavailable, recovering: bool
) -> None:
    opened = await health.call_failed(context, shard.provider, exc)
    if opened and not recovering:
        await _leave_open_circuit(context, shard, batch, lease)
        return
    since = shard.unavailable_since or time.time()
    if recovering and time.time() - since >= context.settings.routing.provider_down_failover_s:
        failure = f"{shard.provider} unreachable for {time.time() - since:.0f}s ({exc})"
        verdict = await lifecycle.may_leave_provider(context, batch, shard, failure)
        if verdict.allowed:
            # It may have been created before the provider went away: kept, cancelled and billed if so.
            if await lifecycle.abandon_provider_batch(context, shard, batch, lease, verdict.evidence):
                await end_shard(context, shard, lease, reason="abandoned", error=verdict.evidence)
            return
        exc = ProviderUnavailable(verdict.evidence)
    base = context.settings.routing.submit_retry_base_s
    delay = jitter(min(MAX_SUBMIT_BACKOFF_S, base * 2.0 ** min(shard.attempts, 7)))
    log.warning("shard %s: %s unavailable (%s); retrying in %.0fs", shard.id, shard.provider, exc, delay)
    detail = f"{shard.provider} unreachable since {at(since)}: {exc}; next try at {at(time.time() + delay)}"
    await wait(
        context,
        shard,
        lease,
        "provider_unreachable",
        detail,
        time.time() + delay,
        attempts=shard.attempts + 1,
        last_error=str(exc)[:2000],
        unavailable_since=since,
    )


async def _budget_paused(
    context: GatewayContext, shard: Shard, batch: Batch, lease: Lease, *, reserved: bool = False
) -> bool:
    """Keep the shard from starting when its budgets say so: it waits while its batch's canary is held for an
    operator or while a hard budget of its team is spent; it ends unrun when its batch no longer fits a hard
    budget (the batch is stopped, see :mod:`gateway.billing.guard`). A ``reserved`` shard (already
    ``submitting``, nothing sent) that waits gives its provider slot back in the same write."""
    give_back: dict[str, object] = {"state": "queued"} if reserved else {}
    # Only the budget check writes (its projection, a stop); the other branch commits nothing.
    async with transaction(context.sessions) as session:
        current = await repo.get_batch(session, None, batch.id) or batch
        if current.hold_reason == "canary" or stop_reason(current):
            check = guard.BudgetCheck("go")
        else:
            check = await guard.running_check(session, current, context.settings.billing, starting=True)
    if halt := stop_reason(current):
        # Stopped (by a budget, a cancel) since this step was claimed: nothing more is sent.
        await end_shard(context, shard, lease, reason=halt)
        return True
    if current.hold_reason == "canary":
        detail = f"held for an operator after its canary: {current.hold_detail or 'see the batch'}"
        await wait(context, shard, lease, "canary_hold", detail, time.time() + CANARY_HOLD_RECHECK_S, **give_back)
        return True
    if check.alert is not None:
        alerts.count_fired([check.alert])
    if check.action == "stop":
        async with transaction(context.sessions) as session:
            await billing_db.wake_open_shards(session, batch.id)
        await end_shard(context, shard, lease, reason="budget_exceeded", error=check.message)
        return True
    if check.action == "go":
        return False
    if check.action == "wait":
        await wait(context, shard, lease, "budget_hold", check.message, time.time() + COLLECT_RECHECK_S, **give_back)
        return True
    until = time.time() + BUDGET_RECHECK_S
    detail = f"held by budget: {check.message}"
    await wait(context, shard, lease, "budget_hold", detail, until, last_error=f"paused: {check.message}", **give_back)
    return True


async def _leave_open_circuit(
    context: GatewayContext,
    shard: Shard,
    batch: Batch,
    lease: Lease,
    failure: str | None = None,
    code: str = "circuit_open",
) -> None:
    """The provider's circuit is open (or it refused the key): move the unsent shard elsewhere, fail it when
    pinned, or wait for the provider when no other one is healthy."""
    if failure is None:
        failure = f"{shard.provider} is unavailable (circuit open: {await health.last_error(context, shard.provider)})"
        if "authentication failed" in failure:
            code = "auth_failed"
    verdict = await lifecycle.may_leave_provider(context, batch, shard, failure)
    if not verdict.allowed:
        delay = jitter(context.settings.routing.circuit_cooldown_s)
        what = (
            f"{shard.provider} refused the gateway's key (fix the key in its api_key_env and restart)"
            if code == "auth_failed"
            else f"waiting for {shard.provider} to recover"
        )
        detail = f"{what}: {verdict.evidence}; next look at {at(time.time() + delay)}"
        await wait(context, shard, lease, code, detail, time.time() + delay, last_error=verdict.evidence)
        return
    if shard.pinned:
        message = f"{failure}; the batch pins this provider, so its requests were not moved elsewhere"
        await end_shard(context, shard, lease, reason="failed", error=message)
        return
    await end_shard(context, shard, lease, reason="rerouted", error=verdict.evidence)


async def _reserve_capacity(context: GatewayContext, shard: Shard, lease: Lease) -> bool:
    """Move the shard to ``submitting`` (with a fresh submit token) if the provider's caps allow one more batch."""
    limits = context.providers.get(shard.provider).config.limits
    async with reading(context.sessions) as session:
        batches, tokens = await shard_db.in_flight(session, shard.provider)
    if not _fits(limits, shard, batches, tokens, including_self=False):
        await _wait_for_capacity(context, shard, lease, limits, batches)
        return False
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session, shard, lease, state="submitting", attempts=shard.attempts + 1, submit_token=new_id("", 32)
        )
    if not saved:
        return False
    # Another worker may have reserved at the same moment: recount with both visible.
    async with reading(context.sessions) as session:
        batches, tokens = await shard_db.in_flight(session, shard.provider)
    if _fits(limits, shard, batches, tokens, including_self=True):
        return True
    async with transaction(context.sessions) as session:
        await shard_db.save_shard(session, shard, lease, state="queued")
    await _wait_for_capacity(context, shard, lease, limits, batches - 1)
    return False


async def _wait_for_capacity(
    context: GatewayContext, shard: Shard, lease: Lease, limits: ProviderLimits, in_flight: int
) -> None:
    quota = limits.max_enqueued_tokens_per_model
    detail = (
        f"queued behind {in_flight} provider batches running at {shard.provider} "
        f"(max_batches_in_flight {limits.max_batches_in_flight}"
        + (f", enqueued-token quota {quota}" if quota else "")
        + ")"
    )
    await wait(context, shard, lease, "queued_capacity", detail, time.time() + jitter(CAPACITY_RETRY_S))


def _fits(limits: ProviderLimits, shard: Shard, batches: int, tokens: dict[str, int], *, including_self: bool) -> bool:
    own_batches = 1 if including_self else 0
    own_tokens = shard.estimated_input_tokens if including_self else 0
    if batches - own_batches >= limits.max_batches_in_flight:
        return False
    cap = limits.max_enqueued_tokens_per_model
    queued = tokens.get(shard.provider_model, 0) - own_tokens
    # A shard larger than the whole quota still runs once nothing else is queued for that model.
    return cap is None or queued == 0 or queued + shard.estimated_input_tokens <= cap


async def _record_submitted(
    context: GatewayContext, shard: Shard, batch: Batch, lease: Lease, result: SubmitResult
) -> None:
    poll_s = lifecycle.first_poll_delay_s(context, shard.provider)
    now = time.time()
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            lease,
            state="running",
            provider_batch_id=result.provider_batch_id,
            provider_file_id=result.provider_file_id,
            submitted_at=now,
            poll_delay_s=poll_s,
            next_action_at=now + poll_s,
            last_progress_at=now,
            unavailable_since=None,
            last_error=None,
            wait_code="provider_turnaround",
            wait_detail=f"submitted to {shard.provider} at {at(now)}; waiting for its first status",
        )
    if not saved:
        # Another worker owns the shard now and may have submitted it too: this provider batch is not ours to use.
        await _register_orphan(
            context, shard, batch, result.provider_batch_id, "its worker lost the lease before recording it"
        )
        return
    log.info("shard %s submitted to %s as %s", shard.id, shard.provider, result.provider_batch_id)
