"""Settling abandoned provider batches: cancel them, follow them to their end, and bill what they ran.

When work moves off a provider batch that may still run (its provider stayed unreachable, it stalled,
its step kept failing, or a worker that had lost its lease created it), the gateway stops waiting for
its answers but keeps owning it (:func:`gateway.pipeline.lifecycle.abandon_provider_batch`):

1. a provider batch whose id was never recorded is looked up by its submit token;
2. it is sent a cancel as soon as its provider answers (one attempt every ``abandoned_sweep_s``,
   so within about one poll interval of the provider coming back);
3. it is polled, backing off to ``provider_poll_max_s``, until the provider ends it;
4. its results are read once and what the provider billed (the usage of its successful answers) is
   written to the ledger as kind ``abandoned`` against the batch and its team: it counts in budgets, in
   ``batchgw_spend_usd_total{reason="abandoned"}``, in the batch's cost and as "paid twice" on the
   batch. Its answers are never used: the requests were answered elsewhere, and the first answer the
   gateway recorded is the one delivered.

An orphan (created by a worker that lost its lease) that the shard's new owner found and adopted is
settled without a bill: the shard's own collection bills it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway import metrics
from gateway.context import GatewayContext
from gateway.db import abandoned as abandoned_db
from gateway.db.leases import Lease
from gateway.db.models import AbandonedProviderBatch, Shard
from gateway.db.unit_of_work import Rollback, reading, transaction
from gateway.pipeline import ledger
from gateway.pipeline.results import billed_usage
from gateway.providers.base import (
    CapabilityNotSupported,
    ProviderAuthFailed,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
)
from gateway.storage import BlobMissing
from gateway.storage.local import scratch_file

log = logging.getLogger(__name__)


async def run_due(context: GatewayContext, owner: str, lease_s: float) -> None:
    """Advance every abandoned provider batch that is due (claimed one at a time across workers)."""
    sent_at = time.monotonic()  # the leases count from before the claims (see Lease.renewed_at)
    rows = await abandoned_db.claim_due(context.sessions, owner, lease_s)
    leases = [Lease(owner, row.lease_token, lease_s, renewed_at=sent_at) for row in rows]
    # Concurrently: one provider batch waiting out its adapter's retries must not delay the others' cancels.
    await asyncio.gather(*(_advance_one(context, row, lease) for row, lease in zip(rows, leases, strict=True)))


async def _advance_one(context: GatewayContext, row: AbandonedProviderBatch, lease: Lease) -> None:
    try:
        await advance(context, row, lease)
    except Exception:
        log.exception("abandoned provider batch %s at %s: settling failed", row.provider_batch_id, row.provider)
        await _later(context, row, lease, "settling failed unexpectedly; retrying")


async def advance(context: GatewayContext, row: AbandonedProviderBatch, lease: Lease) -> None:
    """One step for one abandoned provider batch: find it, cancel it, poll it, or bill it."""
    if row.provider not in context.providers:
        await _settle(context, row, lease, "its provider is no longer configured", None)
        return
    adapter = context.providers.get(row.provider)
    try:
        if row.provider_batch_id is None:
            found = await adapter.find_submitted(row.submit_token)
            if found is None:
                await _settle(context, row, lease, "never created at the provider", None)
                return
            async with transaction(context.sessions) as session:
                await abandoned_db.save(session, row, lease, provider_batch_id=found.provider_batch_id)
        assert row.provider_batch_id is not None
        if row.origin == "orphan":
            async with reading(context.sessions) as session:
                fate = await abandoned_db.orphan_fate(session, row, row.provider_batch_id)
            if fate == "undecided":
                await _later(context, row, lease, "its shard is being submitted; deciding once that is done")
                return
            if fate == "adopted":
                await _settle(context, row, lease, "adopted by the shard's new owner", None)
                return
        if row.cancel_sent_at is None:
            try:
                await adapter.cancel(row.provider_batch_id)
            except ProviderAuthFailed:
                raise
            except (ProviderRejected, CapabilityNotSupported) as exc:
                log.info("abandoned %s at %s: cancel refused (%s)", row.provider_batch_id, row.provider, exc)
            async with transaction(context.sessions) as session:
                await abandoned_db.save(session, row, lease, cancel_sent_at=time.time())
            log.info("abandoned provider batch %s at %s: cancel sent", row.provider_batch_id, row.provider)
        status = await adapter.poll(row.provider_batch_id, fresh_after=row.next_action_at)
        if not status.state.is_terminal:
            await _later(context, row, lease, None, provider_status=status.raw_status, backoff=True)
            return
        await _bill(context, row, lease, status.raw_status)
    except (ProviderUnavailable, ProviderAuthFailed) as exc:
        # Unreachable, or refusing the key until an operator fixes it: the batch may still bill, so keep at it.
        await _later(context, row, lease, f"{row.provider} unavailable: {exc}")
    except ProviderError as exc:
        # The provider will not tell (e.g. the batch is gone): nothing more can be learnt or billed.
        await _settle(context, row, lease, f"the provider refused to report on it: {exc}", None)


async def _bill(context: GatewayContext, row: AbandonedProviderBatch, lease: Lease, provider_status: str) -> None:
    """Read the ended provider batch's results and record what it billed."""
    assert row.provider_batch_id is not None
    adapter = context.providers.get(row.provider)
    raw = scratch_file(context.blobs.scratch, suffix=".abandoned.jsonl")
    try:
        input_key = await _input_key(context, row)
        try:
            async with context.blobs.local_copy(input_key) as input_path:
                reported = await adapter.fetch_results(row.provider_batch_id, raw, input_path=input_path)
        except BlobMissing:
            reported = await adapter.fetch_results(row.provider_batch_id, raw, input_path=None)
        usage = await asyncio.to_thread(billed_usage, raw, adapter.results_as_sent)
    finally:
        raw.unlink(missing_ok=True)
    totals = usage.as_dict()
    # Answers it billed that could not be read count too, where the provider batch reports its own total.
    for name, tokens in (ledger.unread_usage(reported, usage) or {}).items():
        totals[name] += tokens
    await _settle(context, row, lease, None, provider_status, totals, usage.requests, usage.billed_usd)


async def _input_key(context: GatewayContext, row: AbandonedProviderBatch) -> str:
    async with reading(context.sessions) as session:
        shard = await session.get(Shard, row.shard_id)
    return shard.input_key if shard is not None else ""


async def _settle(
    context: GatewayContext,
    row: AbandonedProviderBatch,
    lease: Lease,
    note: str | None,
    provider_status: str | None,
    usage: dict[str, int] | None = None,
    requests: int = 0,
    billed_usd: float = 0.0,
) -> None:
    """Close the row; with ``usage``, in the same transaction as its ledger row."""
    cost, team = 0.0, ""
    async with transaction(context.sessions) as session:
        values: dict[str, object] = {
            "state": "settled",
            "settled_at": time.time(),
            "provider_status": provider_status,
            "last_error": note,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if usage is not None:
            # The ledger row first, for its cost: the row's save below clears its lease, after which no write of
            # this holder matches; a save that finds the lease gone rolls the ledger row back with it.
            cost, team = await ledger.record_abandoned(session, row, usage, billed_usd)
            values |= {
                "requests_billed": requests,
                "input_tokens": usage["input"],
                "output_tokens": usage["output"],
                "cost_usd": cost,
            }
        settled = await abandoned_db.save(session, row, lease, **values)
        if not settled:
            raise Rollback
    if not settled:
        return
    if usage is not None:
        metrics.record_abandoned_spend(provider=row.provider, model=row.model, team=team, cost_usd=cost)
        log.warning(
            "abandoned provider batch %s at %s ended %s: %d requests billed, $%.6f recorded (paid twice)",
            row.provider_batch_id, row.provider, provider_status, requests, cost,
        )  # fmt: skip
    else:
        log.info("abandoned provider batch %s at %s settled: %s", row.provider_batch_id, row.provider, note)


async def _later(
    context: GatewayContext,
    row: AbandonedProviderBatch,
    lease: Lease,
    error: str | None,
    *,
    provider_status: str | None = None,
    backoff: bool = False,
) -> None:
    """Look at the row again after a while: every sweep while the provider is away (so a cancel follows its
    return at once), backing off to the poll ceiling while the provider batch winds down."""
    settings = context.settings.worker
    delay = settings.abandoned_sweep_s
    if backoff:
        growing = settings.abandoned_sweep_s * 2 ** min(row.attempts, 6)
        delay = min(settings.provider_poll_max_s, max(settings.provider_poll_min_s, growing))
    values: dict[str, object] = {
        "attempts": row.attempts + 1,
        "next_action_at": time.time() + delay,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if error is not None:
        values["last_error"] = error[:2000]
    if provider_status is not None:
        values["provider_status"] = provider_status
    async with transaction(context.sessions) as session:
        await abandoned_db.save(session, row, lease, **values)
