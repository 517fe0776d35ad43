"""Canary runs: a few requests first, measured, before the rest of the batch is spent.

A batch asks for one with the ``canary`` hint (N requests), or gets the deployment's default when it
is large (``routing.canary_requests`` for jobs of at least ``routing.canary_min_requests``). The route
stage puts the first N requests in canary shards and holds the others (state ``held``). When the last
canary shard is collected (retries included), the real cost per request projects the full job's cost,
and the verdict is stored as a routing decision of kind ``canary``:

* the projection above the batch's own ``max_cost_usd``, or the canary's share of failed requests above
  ``routing.canary_max_error_rate``: the held requests are not run, each gets an error line, and the batch
  fails with a message that gives the projection;
* the projection above ``billing.anomaly_factor`` times the estimate, or above what a hard budget of the
  team can take beside what is spent and reserved: with ``billing.canary_action = "hold"`` (the default)
  the batch is held for an operator, with an alert saying what was projected and why; an operator releases
  it (the rest runs) or cancels it (admin API, dashboard, ``batchgw canary``). With ``"alert"`` the alert
  fires and the rest runs. Either way, before the rest starts the budget checks raise the batch's
  reservation to its projection and stop it if a hard budget cannot take that;
* otherwise the rest of the batch runs.
"""

from __future__ import annotations

import logging
import time

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.billing import guard
from gateway.billing.budgets import usd
from gateway.context import GatewayContext
from gateway.db import billing as billing_db
from gateway.db import projections as projections_db
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, BillingAlert, RoutingDecision
from gateway.routing.placement import batch_hints, policy_name

log = logging.getLogger(__name__)

HOLD = "canary"
"""``hold_reason`` of a batch held for an operator after its canary."""


async def evaluate(session: AsyncSession, context: GatewayContext, batch: Batch) -> BillingAlert | None:
    """Decide a batch's canary once its canary shards are all done (call under the batch lock); returns the
    alert a hold (or an alert-only verdict) raised, to be counted once the caller commits."""
    stats = await shard_db.canary_stats(session, batch.id)
    if stats.open_canary or not stats.held:
        return None
    current = await repo.get_batch(session, None, batch.id)
    if current is None:
        return None
    answered = stats.completed + stats.failed
    per_request = stats.cost_usd / max(1, stats.requests)
    projection = per_request * current.request_total
    error_rate = stats.failed / answered if answered else 1.0
    cap = batch_hints(current).max_cost_usd
    limit = context.settings.routing.canary_max_error_rate
    facts = (
        f"canary of {stats.requests} requests: ${stats.cost_usd:.6f} spent, {stats.failed} of {answered} failed "
        f"({error_rate:.0%}); projected ${projection:.4f} for all {current.request_total} requests"
    )
    problems = []
    if cap is not None and projection > cap:
        problems.append(f"the projection is above max_cost_usd ${cap:.4f}")
    if error_rate > limit:
        problems.append(f"the error rate is above {limit:.0%}")
    worries = []
    if not problems and current.status == "in_progress":
        worries = await _worries(session, context, current, projection)
    settings = context.settings.billing
    holding = bool(worries) and settings.canary_action == "hold"
    if problems:
        outcome = "; ".join(problems) + ": stopped"
    elif worries:
        outcome = "; ".join(worries) + (": held for an operator" if holding else ": alert raised, the rest goes on")
    else:
        outcome = "the rest of the batch goes on"
    session.add(
        RoutingDecision(
            batch_id=batch.id,
            kind="canary",
            model=current.model or "",
            policy=policy_name(context, current),
            chosen_provider=None,
            reason=f"{facts}; {outcome}",
            request_count=stats.requests,
        )
    )
    await repo.update_batch_if(
        session, batch.id, expected_status=current.status, values={"canary_projected_usd": projection}
    )
    if problems:
        message = f"Canary stopped the batch: {facts}; {'; '.join(problems)}."
        await shard_db.drop_held(session, batch.id, message)
        error = {"code": "canary_failed", "message": message, "param": None, "line": None}
        await repo.update_batch_if(
            session, batch.id, expected_status=current.status, values={"errors": [*(current.errors or []), error]}
        )
        log.warning("batch %s: %s", batch.id, message)
        return None
    alert = None
    if worries:
        verb = "held for an operator (release or cancel it)" if holding else "going on"
        message = f"Canary of batch {batch.id}: {facts}; {'; '.join(worries)}. The batch is {verb}."
        alert = await _alert(session, current, projection, message, settings.webhook_url is not None)
    if holding:
        detail = f"{facts}; {'; '.join(worries)}"
        await shard_db.hold_for_operator(session, batch.id, f"held for an operator after its canary: {detail}")
        await repo.update_batch_if(
            session, batch.id, expected_status=current.status, values={"hold_reason": HOLD, "hold_detail": detail}
        )
        log.warning("batch %s: %s; held for an operator", batch.id, detail)
        return alert
    await shard_db.release_held(session, batch.id)
    log.info("batch %s: %s; released", batch.id, facts)
    return alert


async def _worries(session: AsyncSession, context: GatewayContext, batch: Batch, projection: float) -> list[str]:
    """Why the projection calls for an operator: far above the estimate, or more than a hard budget can take."""
    worries = []
    estimate = batch.estimated_cost_usd or 0.0
    factor = context.settings.billing.anomaly_factor
    if estimate > 0 and projection > factor * estimate:
        worries.append(
            f"the projection is {projection / estimate:.1f}x the estimate of {usd(estimate)} "
            f"(above anomaly_factor {factor:g})"
        )
    facts = await projections_db.projection_facts(session, batch.id)
    whole = guard.Projection(
        estimate_usd=estimate,
        actual_usd=facts.actual_usd,
        rest_usd=max(0.0, projection - facts.actual_usd),
        ratio=projection / estimate if estimate > 0 else 1.0,
        answered=facts.answered,
    )
    refusal = await guard.over_budget(session, batch, whole)
    if refusal is not None:
        worries.append(f"the projection is above what the hard budget can take ({refusal})")
    return worries


async def _alert(
    session: AsyncSession, batch: Batch, projection: float, message: str, webhook: bool
) -> BillingAlert | None:
    alert = await billing_db.insert_alert_once(
        session,
        BillingAlert(
            kind="canary",
            dedup_key=f"canary:{batch.id}",
            team_id=batch.team_id,
            batch_id=batch.id,
            spent_usd=projection,
            limit_usd=batch.estimated_cost_usd,
            message=message,
            created_at=time.time(),
        ),
    )
    if alert is not None and alert.id is not None and webhook:
        await billing_db.queue_webhook(session, alert.id, alert.created_at)
    return alert


async def release(session: AsyncSession, batch: Batch) -> None:
    """An operator lets a held batch's remaining requests run. Before they start, the budget checks raise its
    reservation to its projection and stop it if a hard budget cannot take that: raise the budget first."""
    await repo.update_batch_if(
        session, batch.id, expected_status=batch.status, values={"hold_reason": None, "hold_detail": None}
    )
    await billing_db.wake_open_shards(session, batch.id)
