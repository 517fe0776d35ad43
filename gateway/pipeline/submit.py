"""Stage 4 of the data path: hand a queued shard to its provider, exactly once.

The intent (state ``submitting``) is committed before the provider is called. A shard found in
``submitting`` afterwards (a retry, or a worker killed mid-call) is first looked up at the
provider by its submit token, so a provider batch is never created twice for one shard.
"""

from __future__ import annotations

import logging
import random
import time

from gateway.billing import budgets
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard
from gateway.pipeline import failover, fanout
from gateway.pipeline.collect import end_shard
from gateway.pipeline.lifecycle import stop_reason
from gateway.providers.base import (
    CapabilityNotSupported,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
)
from gateway.providers.config import ProviderLimits
from gateway.routing import health

log = logging.getLogger(__name__)

CAPACITY_RETRY_S = 2.0
BUDGET_RECHECK_S = 5.0
MAX_SUBMIT_BACKOFF_S = 120.0


async def run(context: GatewayContext, shard: Shard, batch: Batch, owner: str) -> None:
    """Shard entry for states ``queued`` and ``submitting``."""
    if reason := stop_reason(batch):
        await end_shard(context, shard, batch, owner, reason=reason)
        return
    recovering = shard.state == "submitting"
    if not recovering:
        if await _budget_paused(context, shard, batch, owner):
            return
        if await health.circuit_of(context, shard.provider) == "open":
            await _leave_open_circuit(context, shard, batch, owner)
            return
    adapter = context.providers.get(shard.provider)
    if adapter.executes_locally:
        async with context.sessions() as session:
            await shard_db.save_shard(session, shard, owner, state="executing", submitted_at=time.time())
            await session.commit()
        await fanout.run(context, shard, batch, owner)
        return
    if not recovering and not await _reserve_capacity(context, shard, owner):
        return
    try:
        found = await adapter.find_submitted(shard.submit_token) if recovering else None
        if found is None:
            async with context.blobs.local_copy(shard.input_key) as path:
                found = await adapter.submit(
                    ShardSubmission(
                        shard_id=shard.id,
                        submit_token=shard.submit_token,
                        endpoint=batch.endpoint,
                        provider_model=shard.provider_model,
                        input_path=path,
                        request_count=shard.request_count,
                    )
                )
        else:
            log.info("shard %s: found its provider batch %s after a restart", shard.id, found.provider_batch_id)
        crash_point("submit.after_provider_create")
    except (ProviderRejected, CapabilityNotSupported) as exc:
        # Another provider may accept it: collection moves the requests to the next candidate.
        log.warning("shard %s rejected by %s: %s", shard.id, shard.provider, exc)
        await end_shard(context, shard, batch, owner, reason="failed", error=f"{shard.provider} refused it: {exc}")
        return
    except ProviderUnavailable as exc:
        opened = await health.call_failed(context, shard.provider, exc)
        if opened and not recovering:
            await _leave_open_circuit(context, shard, batch, owner)
        elif (
            recovering and _down_too_long(context, shard) and await failover.give_up_on_provider(context, batch, shard)
        ):
            # It may have been created before the provider went away; results from it are never read.
            await end_shard(context, shard, batch, owner, reason="abandoned", error=f"{shard.provider}: {exc}")
        else:
            await _retry_later(context, shard, owner, exc)
        return
    await health.call_succeeded(context, shard.provider)
    await _record_submitted(context, shard, owner, found)


async def _budget_paused(context: GatewayContext, shard: Shard, batch: Batch, owner: str) -> bool:
    """Leave the shard queued while a hard budget of its team is exhausted."""
    async with context.sessions() as session:
        paused = await budgets.team_paused(session, batch.team_id)
        if paused is not None:
            await shard_db.save_shard(
                session, shard, owner, next_action_at=time.time() + BUDGET_RECHECK_S, last_error=f"paused: {paused}"
            )
        await session.commit()
    return paused is not None


async def _leave_open_circuit(context: GatewayContext, shard: Shard, batch: Batch, owner: str) -> None:
    """The provider's circuit is open: move the unsent shard elsewhere, fail it when pinned, or wait for
    the provider when no other one serves the model."""
    if not await failover.give_up_on_provider(context, batch, shard):
        wait = context.settings.routing.circuit_cooldown_s
        async with context.sessions() as session:
            await shard_db.save_shard(
                session,
                shard,
                owner,
                next_action_at=time.time() + _jitter(wait),
                last_error=f"waiting for {shard.provider} to recover (circuit open; no other provider serves it)",
            )
            await session.commit()
        return
    if shard.pinned:
        message = (
            f"provider {shard.provider} is unavailable (circuit open after repeated failures); "
            "the batch pins this provider, so its requests were not moved elsewhere"
        )
        await end_shard(context, shard, batch, owner, reason="failed", error=message)
        return
    await end_shard(
        context, shard, batch, owner, reason="rerouted", error=f"{shard.provider} is unavailable (circuit open)"
    )


def _down_too_long(context: GatewayContext, shard: Shard) -> bool:
    since = shard.unavailable_since
    return since is not None and time.time() - since >= context.settings.routing.provider_down_failover_s


async def _reserve_capacity(context: GatewayContext, shard: Shard, owner: str) -> bool:
    """Move the shard to ``submitting`` if the provider's caps allow one more batch."""
    limits = context.providers.get(shard.provider).config.limits
    async with context.sessions() as session:
        if not _fits(limits, shard, *await shard_db.in_flight(session, shard.provider), including_self=False):
            await shard_db.save_shard(session, shard, owner, next_action_at=time.time() + _jitter(CAPACITY_RETRY_S))
            await session.commit()
            return False
        await shard_db.save_shard(session, shard, owner, state="submitting", attempts=shard.attempts + 1)
        await session.commit()
        # Another worker may have reserved at the same moment: recount with both visible.
        if _fits(limits, shard, *await shard_db.in_flight(session, shard.provider), including_self=True):
            return True
        await shard_db.save_shard(
            session, shard, owner, state="queued", next_action_at=time.time() + _jitter(CAPACITY_RETRY_S)
        )
        await session.commit()
    return False


def _fits(limits: ProviderLimits, shard: Shard, batches: int, tokens: dict[str, int], *, including_self: bool) -> bool:
    own_batches = 1 if including_self else 0
    own_tokens = shard.estimated_input_tokens if including_self else 0
    if batches - own_batches >= limits.max_batches_in_flight:
        return False
    cap = limits.max_enqueued_tokens_per_model
    queued = tokens.get(shard.provider_model, 0) - own_tokens
    # A shard larger than the whole quota still runs once nothing else is queued for that model.
    return cap is None or queued == 0 or queued + shard.estimated_input_tokens <= cap


async def _retry_later(context: GatewayContext, shard: Shard, owner: str, exc: ProviderUnavailable) -> None:
    base = context.settings.routing.submit_retry_base_s
    delay = min(MAX_SUBMIT_BACKOFF_S, base * 2.0 ** min(shard.attempts, 7))
    if isinstance(exc, ProviderRateLimited) and exc.retry_after_s:
        delay = max(delay, exc.retry_after_s)
    log.warning("shard %s: %s unavailable (%s); retrying in %.0fs", shard.id, shard.provider, exc, delay)
    async with context.sessions() as session:
        await shard_db.save_shard(
            session,
            shard,
            owner,
            attempts=shard.attempts + 1,
            next_action_at=time.time() + _jitter(delay),
            last_error=str(exc)[:2000],
            unavailable_since=shard.unavailable_since or time.time(),
        )
        await session.commit()


async def _record_submitted(context: GatewayContext, shard: Shard, owner: str, result: SubmitResult) -> None:
    poll_s = context.settings.worker.provider_poll_min_s
    now = time.time()
    async with context.sessions() as session:
        await shard_db.save_shard(
            session,
            shard,
            owner,
            state="running",
            provider_batch_id=result.provider_batch_id,
            provider_file_id=result.provider_file_id,
            submitted_at=now,
            poll_delay_s=poll_s,
            next_action_at=now + poll_s,
            last_progress_at=now,
            unavailable_since=None,
            last_error=None,
        )
        await session.commit()
    log.info("shard %s submitted to %s as %s", shard.id, shard.provider, result.provider_batch_id)


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)
