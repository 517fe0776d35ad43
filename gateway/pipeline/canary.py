"""Canary runs: a few requests first, measured, before the rest of the batch is spent.

A batch asks for one with the ``canary`` hint (N requests), or gets the deployment's default when it
is large (``routing.canary_requests`` for jobs of at least ``routing.canary_min_requests``). The route
stage puts the first N requests in canary shards and holds the others (state ``held``). When the last
canary shard is collected (retries included), the real cost per request projects the full job's
cost: the batch goes on only if that projection stays under its ``max_cost_usd`` and the canary's
share of failed requests under ``routing.canary_max_error_rate``. Otherwise the held requests are not
run, each gets an error line, and the batch fails with a message that gives the projection. Either
way the verdict is stored as a routing decision of kind ``canary``.
"""

from __future__ import annotations

import logging

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, RoutingDecision
from gateway.routing.placement import batch_hints, policy_name

log = logging.getLogger(__name__)


async def evaluate(session: AsyncSession, context: GatewayContext, batch: Batch) -> None:
    """Decide a batch's canary once its canary shards are all done (call under the batch lock)."""
    stats = await shard_db.canary_stats(session, batch.id)
    if stats.open_canary or not stats.held:
        return
    current = await repo.get_batch(session, None, batch.id)
    if current is None:
        return
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
    session.add(
        RoutingDecision(
            batch_id=batch.id,
            kind="canary",
            model=current.model or "",
            policy=policy_name(context, current),
            chosen_provider=None,
            reason=f"{facts}; " + ("; ".join(problems) + ": stopped" if problems else "the rest of the batch goes on"),
            request_count=stats.requests,
        )
    )
    if not problems:
        await shard_db.release_held(session, batch.id)
        log.info("batch %s: %s; released", batch.id, facts)
        return
    message = f"Canary stopped the batch: {facts}; {'; '.join(problems)}."
    await shard_db.drop_held(session, batch.id, message)
    error = {"code": "canary_failed", "message": message, "param": None, "line": None}
    await repo.update_batch_if(
        session, batch.id, expected_status=current.status, values={"errors": [*(current.errors or []), error]}
    )
    log.warning("batch %s: %s", batch.id, message)
