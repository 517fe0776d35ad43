"""Hard budgets that hold: reservations that follow reality, and the checks that stop spending.

**Reservations follow reality.** A batch reserves its estimate when it is routed
(:func:`gateway.billing.budgets.reserve`). From then on its *projection* is
``max(estimate, spent so far + projection of the rest)``: the rest is the estimated cost of its unfinished
shards (each at the price of the offer it is placed on, so a failover to a dearer provider raises it), times
the ratio of actual to estimated cost of the requests already answered. The projection is stored on the
batch (``projected_cost_usd``) whenever spend lands, and what a batch still reserves is
``projection - spent``.

**Checks.** Against every hard budget of the batch's team and the global ones:

* when a shard is collected (:func:`after_spend`): a batch whose projection grew beyond what it reserved
  and no longer fits beside what is spent and what other batches reserve is *stopped*: it moves to
  ``cancelling`` with a ``budget_exceeded`` error, its running provider batches are cancelled at their next
  step (what they ran is billed), its queued shards never start, and it ends ``cancelled`` with its partial
  results;
* before a shard is submitted, at every poll of a running provider batch and every second of a fan-out run
  (:func:`running_check`): whether the scope's actual spend reached its limit: then the work *pauses* (a
  running provider batch is cancelled and its unfinished requests wait as a new queued shard, a fan-out run
  stops, queued shards wait with the reason ``budget_hold``) until the budget is raised or its period ends;
  else the same projection check (for fan-out, with the answers of the running shard counted as they
  arrive). A batch that stays within what it reserved is never stopped: when other spend or a lowered limit
  uses the budget up, it pauses;
* before work moves to another provider or is retried (:func:`move_fits`): the move is priced at the new
  offer's rate and must fit.

**The bound.** Nothing is started that does not fit, and no shard of a batch under a hard budget starts while
another of its shards waits to be collected, so a hard budget can only be overshot by work already in flight
when a check finds it exceeded: the requests of the provider batches submitted before that check (at most
``max_batches_in_flight`` x ``max_requests_per_batch`` per provider) and, for fan-out, the requests sent
within the last second (at most one second of ``requests_per_minute``, or ``max_concurrency`` in flight).
Each such request costs at most its input plus its largest output (its ``max_tokens``, else the model's
limit) at its offer's rate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.billing.budgets import EPSILON, status_of, team_paused, usd
from gateway.db import billing as db
from gateway.db import projections as projections_db
from gateway.db.models import Batch, BillingAlert, Shard, now_s
from gateway.settings import BillingSettings

log = logging.getLogger(__name__)

BUDGET_ERROR = "budget_exceeded"


@dataclass(frozen=True)
class Projection:
    """What a batch is now expected to cost in all, and why."""

    estimate_usd: float
    actual_usd: float
    rest_usd: float
    """Projected cost of the work not yet answered."""
    ratio: float
    """Actual / estimated cost of the requests answered so far (1.0 until something is answered)."""
    answered: int

    @property
    def expected_usd(self) -> float:
        """``max(estimate, actual + rest)``: the batch's reservation in all."""
        return max(self.estimate_usd, self.actual_usd + self.rest_usd)

    def describe(self) -> str:
        """For messages: spent, and how the rest is projected."""
        basis = (
            f"the rest projected at {self.ratio:.1f}x its estimate from {self.answered:,} answered requests"
            if self.answered
            else "the rest at its estimate"
        )
        return f"{usd(self.actual_usd)} spent, {usd(self.rest_usd)} more expected ({basis})"


@dataclass(frozen=True)
class Live:
    """Answers of a running fan-out shard not yet in the ledger."""

    shard: Shard
    answered: int
    cost_usd: float


async def project(
    session: AsyncSession, batch: Batch, *, live: Live | None = None, open_delta_usd: float = 0.0
) -> Projection:
    """The batch's projection now; ``live`` counts a running fan-out shard's answers, ``open_delta_usd`` adds
    to the estimate of its unfinished work (a move being priced)."""
    return _projection(batch, await projections_db.projection_facts(session, batch.id), live, open_delta_usd)


def _projection(
    batch: Batch, facts: projections_db.ProjectionFacts, live: Live | None = None, open_delta_usd: float = 0.0
) -> Projection:
    open_estimated = facts.open_estimated_usd + open_delta_usd
    done_expected, done_served, answered, actual = (
        facts.done_expected_usd,
        facts.done_served_usd,
        facts.answered,
        facts.actual_usd,
    )
    if live is not None and live.answered and live.shard.request_count:
        per_request = live.shard.estimated_cost_usd / live.shard.request_count
        done_expected += per_request * live.answered
        open_estimated -= per_request * live.answered
        done_served += live.cost_usd
        answered += live.answered
        actual += live.cost_usd
    ratio = done_served / done_expected if answered and done_expected > 0 else 1.0
    return Projection(
        estimate_usd=batch.estimated_cost_usd or 0.0,
        actual_usd=actual,
        rest_usd=max(0.0, open_estimated) * ratio,
        ratio=ratio,
        answered=answered,
    )


def reserved_total(batch: Batch) -> float:
    """What the batch has reserved in all so far: its stored projection, else its estimate."""
    if batch.projected_cost_usd is not None:
        return batch.projected_cost_usd
    return batch.estimated_cost_usd or 0.0


async def over_budget(session: AsyncSession, batch: Batch, projection: Projection) -> str | None:
    """Why the batch's projection does not fit a hard budget of its team (or a global one), else None."""
    budgets = await db.budgets_of_team(session, batch.team_id, hard_only=True)
    if not budgets:
        return None
    name = await db.team_name(session, batch.team_id)
    still = max(0.0, projection.expected_usd - projection.actual_usd)
    for budget in budgets:
        status = await status_of(session, budget, name, exclude_batch_id=batch.id)
        committed = status.spent_usd + status.reserved_usd
        if committed + still > budget.limit_usd + EPSILON:
            left = max(0.0, budget.limit_usd - committed)
            return (
                f"Batch {batch.id} is now expected to cost {usd(projection.expected_usd)} "
                f"({projection.describe()}), more than the {status.label} of {usd(budget.limit_usd)} can take: "
                f"{usd(status.spent_usd)} spent and {usd(status.reserved_usd)} reserved by other batches leave "
                f"{usd(left)} for the {usd(still)} it still needs."
            )
    return None


async def stop_batch(
    session: AsyncSession, batch_id: str, message: str, settings: BillingSettings
) -> BillingAlert | None:
    """Stop a running batch for its budget: ``cancelling`` with a ``budget_exceeded`` error, and an alert
    (returned, to be counted once the caller commits); None when it was not running (already stopping)."""
    current = await db.get_batch(session, batch_id)
    if current is None or current.status != "in_progress":
        return None
    error = {"code": BUDGET_ERROR, "message": message, "param": None, "line": None}
    changed = await db.stop_batch_if_running(session, batch_id, [*(current.errors or []), error], now_s())
    if not changed:
        return None
    log.warning("batch %s stopped: %s", batch_id, message)
    alert = await db.insert_alert_once(
        session,
        BillingAlert(
            kind="budget_stop",
            dedup_key=f"budget_stop:{batch_id}",
            team_id=current.team_id,
            batch_id=batch_id,
            spent_usd=current.cost_usd,
            message=f"Stopped to hold a hard budget: {message}",
            created_at=time.time(),
        ),
    )
    if alert is not None and alert.id is not None and settings.webhook_url is not None:
        await db.queue_webhook(session, alert.id, alert.created_at)
    return alert


async def after_spend(
    session: AsyncSession, batch: Batch, settings: BillingSettings
) -> tuple[Projection, BillingAlert | None]:
    """After a shard's ledger row (same transaction, under the batch lock): store the batch's projection, and
    stop the batch if it no longer fits a hard budget (returns the alert that raised)."""
    current = await db.get_batch(session, batch.id)
    if current is None:
        current = batch
    facts = await projections_db.projection_facts(session, batch.id)
    projection = _projection(current, facts)
    previous = reserved_total(current)
    stopping = current.status == "cancelling"  # nothing more starts: it reserves nothing beyond its spend
    projected = projection.actual_usd if stopping else projection.expected_usd
    await projections_db.set_projection(session, batch.id, projected)
    if current.status != "in_progress" or current.hold_reason is not None or facts.held:
        return projection, None  # stopping already, or its canary (or an operator) decides
    if projection.expected_usd <= previous + EPSILON:
        return projection, None  # within what it reserved: a spent budget pauses it, it is not its fault
    reason = await over_budget(session, current, projection)
    if reason is None:
        return projection, None
    return projection, await stop_batch(session, batch.id, reason, settings)


@dataclass(frozen=True)
class BudgetCheck:
    """What a running or about-to-start shard must do for its budgets."""

    action: Literal["go", "wait", "pause", "stop"]
    """``go``; ``wait``: a moment, until a finished shard's cost is checked; ``pause``: a hard budget's actual spend
    reached its limit (the work waits for it); ``stop``: the batch's projection does not fit (it is stopped)."""
    message: str = ""
    alert: BillingAlert | None = None


async def running_check(
    session: AsyncSession, batch: Batch, settings: BillingSettings, live: Live | None = None, *, starting: bool = False
) -> BudgetCheck:
    """Check a batch's running or queued work against its hard budgets (the caller commits).

    ``live`` counts the answers of a running fan-out shard that are not in the ledger yet. ``starting``: a shard
    is about to be sent; it waits while another shard of the batch is being collected, so that no work starts
    before the cost of work already done is checked (this keeps the overshoot to the work in flight).
    """
    current = await db.get_batch(session, batch.id) or batch
    if current.status != "in_progress" or not await db.budgets_of_team(session, current.team_id, hard_only=True):
        return BudgetCheck("go")
    extra = live.cost_usd if live is not None else 0.0
    paused = await team_paused(session, current.team_id, extra_spent_usd=extra)
    if paused is not None:
        return BudgetCheck("pause", paused)
    facts = await projections_db.projection_facts(session, current.id)
    if starting and facts.collecting:
        return BudgetCheck("wait", "a finished shard of the batch is being collected: its cost is checked first")
    projection = _projection(current, facts, live)
    if projection.expected_usd <= reserved_total(current) + EPSILON:
        return BudgetCheck("go")
    reason = await over_budget(session, current, projection)
    if reason is None:
        return BudgetCheck("go")
    alert = await stop_batch(session, current.id, reason, settings)
    return BudgetCheck("stop", reason, alert)


async def move_fits(
    session: AsyncSession, batch: Batch, old_estimate_usd: float, new_estimate_usd: float
) -> str | None:
    """Whether moving work whose estimate was ``old_estimate_usd`` to an offer where it is estimated at
    ``new_estimate_usd`` fits the batch's hard budgets; why not, else None."""
    current = await db.get_batch(session, batch.id) or batch
    projection = await project(session, current, open_delta_usd=new_estimate_usd - old_estimate_usd)
    return await over_budget(session, current, projection)
