"""Stage 5 of the data path: follow a submitted shard until its provider batch ends.

Polls back off from ``provider_poll_min_s`` to ``provider_poll_max_s``, so the cost grows with
the number of shards in flight, not with requests. A cancel or the end of the completion window
is passed on to the provider here; results already finished are kept either way.
"""

from __future__ import annotations

import logging
import time

from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard
from gateway.pipeline import failover
from gateway.pipeline.collect import collect_shard, end_shard
from gateway.pipeline.lifecycle import stop_reason
from gateway.providers.base import (
    CapabilityNotSupported,
    ProviderBatchState,
    ProviderError,
    ProviderUnavailable,
)
from gateway.routing import health

log = logging.getLogger(__name__)

END_REASON_BY_STATE = {
    ProviderBatchState.COMPLETED: "completed",
    ProviderBatchState.FAILED: "failed",
    ProviderBatchState.EXPIRED: "expired",
    ProviderBatchState.CANCELLED: "cancelled",
}


async def run(context: GatewayContext, shard: Shard, batch: Batch, owner: str) -> None:
    """Shard entry for state ``running``."""
    assert shard.provider_batch_id, "a running shard has a provider batch"
    adapter = context.providers.get(shard.provider)
    halt = stop_reason(batch)
    if halt and shard.end_reason is None:
        try:
            await adapter.cancel(shard.provider_batch_id)
        except CapabilityNotSupported:
            pass
        except ProviderError as exc:
            await _poll_later(context, shard, owner, error=str(exc))
            return
        async with context.sessions() as session:
            await shard_db.save_shard(session, shard, owner, end_reason=halt)
            await session.commit()
    try:
        status = await adapter.poll(shard.provider_batch_id)
    except ProviderUnavailable as exc:
        await health.call_failed(context, shard.provider, exc)
        since = shard.unavailable_since or time.time()
        down_too_long = time.time() - since >= context.settings.routing.provider_down_failover_s
        if down_too_long and await failover.give_up_on_provider(context, batch, shard):
            message = f"{shard.provider} unreachable for {time.time() - since:.0f}s: {exc}"
            await end_shard(context, shard, batch, owner, reason="abandoned", error=message)
            return
        await _poll_later(context, shard, owner, error=str(exc), unavailable_since=since)
        return
    except ProviderError as exc:
        # The provider refuses to tell (e.g. 404: its batch is gone): nothing more will come back.
        log.warning("shard %s: %s refused the status read: %s", shard.id, shard.provider, exc)
        await end_shard(context, shard, batch, owner, reason="failed", error=str(exc))
        return
    crash_point("poll.after_status")
    if shard.unavailable_since is not None:
        await health.call_succeeded(context, shard.provider)
    if status.state.is_terminal:
        async with context.sessions() as session:
            await shard_db.save_shard(
                session,
                shard,
                owner,
                state="collecting",
                provider_status=status.raw_status,
                end_reason=shard.end_reason or END_REASON_BY_STATE[status.state],
                last_error=status.error,
            )
            await session.commit()
        await collect_shard(context, shard, batch, owner)
        return
    now = time.time()
    progressed = status.completed + status.failed != shard.progress_completed + shard.progress_failed
    last_progress = now if progressed else (shard.last_progress_at or shard.submitted_at or now)
    stall_s = context.settings.routing.stall_timeout_s
    if now - last_progress >= stall_s and not halt:
        if shard.end_reason != "stalled":
            await _give_up_stalled(context, shard, owner, now - last_progress)
        elif now - last_progress >= 2 * stall_s:
            # It did not even honour the cancel: keep nothing from it and move on.
            await end_shard(context, shard, batch, owner, reason="stalled")
            return
    async with context.sessions() as session:
        await shard_db.save_shard(
            session,
            shard,
            owner,
            provider_status=status.raw_status,
            progress_completed=status.completed,
            progress_failed=status.failed,
            last_progress_at=last_progress,
            unavailable_since=None,
        )
        await shard_db.lock_batch(session, shard.batch_id)
        await shard_db.refresh_batch_progress(session, shard.batch_id)
        await session.commit()
    await _poll_later(context, shard, owner)


async def _give_up_stalled(context: GatewayContext, shard: Shard, owner: str, idle_s: float) -> None:
    """Cancel a provider batch that made no progress; what it finished is kept when it ends."""
    assert shard.provider_batch_id
    log.warning("shard %s: no progress at %s for %.0fs; cancelling it", shard.id, shard.provider, idle_s)
    try:
        await context.providers.get(shard.provider).cancel(shard.provider_batch_id)
    except ProviderError as exc:
        log.warning("shard %s: cancelling the stalled batch failed: %s", shard.id, exc)
    async with context.sessions() as session:
        await shard_db.save_shard(
            session, shard, owner, end_reason="stalled", last_error=f"no progress for {idle_s:.0f}s"
        )
        await session.commit()


async def _poll_later(
    context: GatewayContext,
    shard: Shard,
    owner: str,
    error: str | None = None,
    unavailable_since: float | None = None,
) -> None:
    settings = context.settings.worker
    delay = min(settings.provider_poll_max_s, max(settings.provider_poll_min_s, shard.poll_delay_s * 2))
    values: dict[str, object] = {"poll_delay_s": delay, "next_action_at": time.time() + delay}
    if unavailable_since is not None:
        values["unavailable_since"] = unavailable_since
    if error:
        log.warning("shard %s: polling %s failed: %s", shard.id, shard.provider, error)
        values["last_error"] = error[:2000]
    async with context.sessions() as session:
        await shard_db.save_shard(session, shard, owner, **values)
        await session.commit()
