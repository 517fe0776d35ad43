"""The spend ledger: what each collected shard cost, recorded once, and what that spend sets off.

:func:`record` runs inside the transaction that closes a shard (see :mod:`gateway.pipeline.collect`):
it adds the shard's ledger row (unique per shard, so retries, failovers and restarted workers never
count it twice), brings the batch's totals up to date, counts what the answered requests used in the
team's history (learned estimates), fires billing alerts, updates the batch's projection and stops a batch
that no longer fits a hard budget (:mod:`gateway.billing.guard`) or whose spend reached its own
``max_cost_usd``. :func:`count` adds the same figures to the metrics once that
transaction has committed. Cost is the usage the provider reported times the rate of the offer that
served the shard (its batch rate, or the synchronous rate for fan-out; cached and cache-write input at
the offer's own cache rates where the provider reports them), except where the provider reports what it
billed for an answer (OpenRouter's ``usage.cost``): that charge is the cost. The list cost prices the same
tokens at the synchronous list price, so savings are a real figure.

Where a provider batch reports its own total of billed tokens (OpenAI's batch ``usage``) and it is above what
the answers read add up to, the rest was billed for answers the gateway could not read (a line cut short, a
usage it could not parse): :func:`unread_usage` finds it and the shard gets a second row for it (kind
``unread``, or ``unread_rerun`` when those requests run again, which counts as paid twice), so that the ledger
still equals the provider's invoice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import metrics
from gateway.billing import alerts, guard
from gateway.billing.estimate import shard_cost, unbilled, usage_cost_usd
from gateway.billing.history import Sample
from gateway.context import GatewayContext
from gateway.db import billing as billing_db
from gateway.db import history as history_db
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import (
    UNREAD,
    UNREAD_RERUN,
    AbandonedProviderBatch,
    Batch,
    BillingAlert,
    LedgerEntry,
    Shard,
    now_s,
)
from gateway.pipeline.results import Usage
from gateway.providers.base import BatchUsage
from gateway.routing.placement import batch_hints


@dataclass(frozen=True)
class Spend:
    """What recording a shard's spend found."""

    cost_usd: float
    list_cost_usd: float
    team: str
    """The team's name (metrics label)."""
    alerts: list[BillingAlert]
    """Billing alerts this spend fired (counted in the metrics by :func:`count`)."""
    wake_workers: bool
    """Alerts fired or the batch was stopped: work for the workers right away."""
    stopped: bool = False
    """The batch was stopped (its budget or its own cost cap): its open shards should be woken."""
    unread_cost_usd: float = 0.0
    """Of the shard's spend, what its provider billed for answers the gateway could not read."""


async def record(
    session: AsyncSession,
    context: GatewayContext,
    batch: Batch,
    shard: Shard,
    completed: int,
    usage: dict[str, int],
    sample: Sample | None = None,
    billed_usd: float = 0.0,
    unread: dict[str, int] | None = None,
    rerun: bool = False,
) -> Spend:
    """Add the shard's ledger row and what follows from it (call under the batch lock; the caller commits):
    the batch's totals, the team's history of what requests used (``sample``), billing alerts, the batch's
    projection and the budget checks that may stop it (:mod:`gateway.billing.guard`), and its own cost cap.
    ``billed_usd`` is what the provider reported billing for the answers counted in ``usage``'s ``billed_*``.
    ``unread`` (from :func:`unread_usage`) adds the row of answers billed but not read, ``rerun`` when their
    requests run again."""
    downgraded = usage.get("standard_input", 0) or usage.get("standard_output", 0)
    standard = context.offers.standard_rates(shard.provider, shard.provider_model) if downgraded else None
    cost, list_cost = shard_cost(shard, usage, standard, billed_usd)
    session.add(_entry(batch, shard, "served", completed, usage, cost, list_cost))
    unread_cost = _add_unread(session, batch, shard, unread, rerun) if unread else 0.0
    await session.flush()
    await shard_db.refresh_batch_progress(session, batch.id)
    if sample is not None:
        await history_db.add_to_history(
            session,
            batch.team_id,
            shard.model,
            batch.endpoint,
            requests=sample.requests,
            output_tokens=sample.output_tokens,
            input_tokens=sample.input_tokens,
            estimated_input_tokens=sample.estimated_input_tokens,
            histogram=sample.histogram,
        )
    fired = await alerts.after_spend(session, batch.team_id, batch.id, context.settings.billing)
    capped = await _cost_cap_reached(session, batch)
    _, stopped = await guard.after_spend(session, batch, context.settings.billing)
    if stopped is not None:
        fired.append(stopped)
    team = await billing_db.team_name(session, batch.team_id) or batch.team_id
    return Spend(
        cost + unread_cost,
        list_cost,
        team,
        fired,
        bool(fired) or capped,
        stopped=stopped is not None or capped,
        unread_cost_usd=unread_cost,
    )


def unread_usage(reported: BatchUsage | None, read: Usage) -> dict[str, int] | None:
    """The tokens a provider batch reports billing (``reported``) beyond those of the answers read from its results
    (``read``): answers billed that the gateway could not read. None when the provider reports no total, or
    the answers read account for all of it."""
    if reported is None:
        return None
    beyond = {
        "input": max(0, reported.input - read.input),
        "output": max(0, reported.output - read.output),
        "cached": max(0, reported.cached - read.cached),
        "reasoning": max(0, reported.reasoning - read.reasoning),
    }
    beyond["cached"] = min(beyond["cached"], beyond["input"])
    return beyond if beyond["input"] or beyond["output"] else None


def _add_unread(session: AsyncSession, batch: Batch, shard: Shard, unread: dict[str, int], rerun: bool) -> float:
    """The ledger row of what the shard's provider batch billed for answers the gateway could not read; its cost,
    at the shard's rates (no list cost: nobody was served by them)."""
    cost = usage_cost_usd(
        unread,
        (shard.input_per_mtok, shard.output_per_mtok),
        (shard.cached_input_per_mtok, shard.cache_write_per_mtok),
    )
    session.add(_entry(batch, shard, UNREAD_RERUN if rerun else UNREAD, 0, unread, cost, 0.0))
    return cost


def _entry(
    batch: Batch, shard: Shard, kind: str, requests: int, usage: dict[str, int], cost: float, list_cost: float
) -> LedgerEntry:
    """A ledger row of ``kind`` for the shard's ``usage``, at ``cost``."""
    return LedgerEntry(
        shard_id=shard.id,
        kind=kind,
        batch_id=batch.id,
        team_id=batch.team_id,
        api_key_id=batch.api_key_id,
        provider=shard.provider,
        model=shard.model,
        provider_model=shard.provider_model,
        mode=shard.mode,
        requests=requests,
        input_tokens=usage["input"],
        output_tokens=usage["output"],
        cached_tokens=usage["cached"],
        cache_write_tokens=usage.get("cache_write", 0),
        cost_usd=cost,
        list_cost_usd=list_cost,
    )


async def record_abandoned(
    session: AsyncSession, row: AbandonedProviderBatch, usage: dict[str, int], billed_usd: float = 0.0
) -> tuple[float, str]:
    """Add the ledger row of what an abandoned provider batch billed (kind ``abandoned``) and bring its
    batch's totals up to date; returns the cost and the team's name (the caller commits). ``billed_usd`` is
    what the provider reported billing for the answers counted in ``usage``'s ``billed_*``."""
    cost = usage_cost_usd(unbilled(usage), (row.input_per_mtok, row.output_per_mtok)) + billed_usd
    session.add(
        LedgerEntry(
            shard_id=row.shard_id,
            kind="abandoned",
            batch_id=row.batch_id,
            team_id=row.team_id,
            api_key_id=row.api_key_id,
            provider=row.provider,
            model=row.model,
            provider_model=row.provider_model,
            mode="batch",
            requests=0,  # answered elsewhere: billed here, but not requests this batch was served by
            input_tokens=usage["input"],
            output_tokens=usage["output"],
            cached_tokens=usage["cached"],
            cache_write_tokens=usage.get("cache_write", 0),
            cost_usd=cost,
            list_cost_usd=0.0,
        )
    )
    await session.flush()
    await shard_db.lock_batch(session, row.batch_id)
    await shard_db.refresh_batch_progress(session, row.batch_id)
    team = await billing_db.team_name(session, row.team_id) or row.team_id
    return cost, team


def count(shard: Shard, spend: Spend, succeeded: int, failed: int, moved: int, usage: dict[str, int]) -> None:
    """Metrics of a collected shard, counted once its transaction committed."""
    halted = shard.end_reason in ("cancelled", "expired", "budget_exceeded")
    unanswered = failed if halted else 0
    metrics.record_shard_collected(
        provider=shard.provider,
        model=shard.model,
        team=spend.team,
        succeeded=succeeded,
        failed=failed - unanswered,
        expired=unanswered if shard.end_reason == "expired" else 0,
        cancelled=unanswered if shard.end_reason in ("cancelled", "budget_exceeded") else 0,
        retried=moved,
        input_tokens=usage["input"],
        output_tokens=usage["output"],
        cost_usd=spend.cost_usd - spend.unread_cost_usd,
        list_cost_usd=spend.list_cost_usd,
        turnaround_s=(time.time() - shard.submitted_at) if shard.submitted_at else None,
    )
    if spend.unread_cost_usd:
        metrics.record_unread_spend(
            provider=shard.provider, model=shard.model, team=spend.team, cost_usd=spend.unread_cost_usd
        )
    alerts.count_fired(spend.alerts)


async def _cost_cap_reached(session: Any, batch: Batch) -> bool:
    """Stop a batch whose spend reached its own ``max_cost_usd``: it is cancelled with an error saying so."""
    cap = batch_hints(batch).max_cost_usd
    if cap is None:
        return False
    current = await repo.get_batch(session, None, batch.id)
    if current is None or current.cost_usd < cap or current.status != "in_progress":
        return False
    error = {
        "code": "max_cost_reached",
        "message": f"Spend reached the batch's max_cost_usd of ${cap:.4f} (${current.cost_usd:.4f}); "
        "its remaining requests were not run.",
        "param": "metadata.max_cost_usd",
        "line": None,
    }
    # Only the batch row: its shards notice at their next step (touching them here, under the batch
    # lock, would take locks in the opposite order to other workers).
    return await repo.update_batch_if(
        session,
        batch.id,
        expected_status="in_progress",
        values={"status": "cancelling", "cancelling_at": now_s(), "errors": [*(current.errors or []), error]},
    )
