"""Stage 3 of the data path: choose where each request runs and cut the batch into shards.

Each model's requests and tokens are estimated (:mod:`gateway.billing.estimate`, learned from the team's past
requests where it has them) from the figures the file's check kept of each request (its model, body size and
output cap: :mod:`gateway.pipeline.line_figures`), or, for a file without them, from a read of the file, keeping
each line's model and tokens; the batch's policy then
ranks the offers of each model (:mod:`gateway.routing.placement`), and every decision is stored with its
candidates and reason. A second pass writes the shard inputs (:mod:`gateway.pipeline.shard_plans`): lines of one
model for one provider, within that provider's request and byte limits, copied as they are unless ``body.model``
is rewritten to the provider's model id; a policy that splits a model across providers gives each its share of
the lines.

Shard inputs are written to the blob store first (under names derived from the batch id, so a rerun
overwrites them), then the shard rows, the decisions, the budget reservation and the batch's move
to ``run`` are committed in one transaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from gateway.billing import budgets
from gateway.billing.estimate import estimate_figures, estimate_lines, team_estimator
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, RoutingDecision
from gateway.db.unit_of_work import Rollback, reading, transaction
from gateway.errors import UnknownModel
from gateway.pipeline.lifecycle import end_unstarted, fail_batch, shard_input_key
from gateway.pipeline.line_figures import read_figures
from gateway.pipeline.shard_plans import Placement, ShardPlan, publish_shards, split_into_shards
from gateway.routing.placement import NoUsableProvider, rank, split_shares
from router_policies.base import PolicyError

log = logging.getLogger(__name__)


async def run(context: GatewayContext, batch: Batch, lease: Lease) -> None:
    """Stage entry: rank offers for each model of a validated batch and create its shards."""
    if batch.status == "cancelling":
        await end_unstarted(context, batch, lease, status="cancelled")
        return
    async with reading(context.sessions) as session:
        input_file = await repo.get_file(session, batch.team_id, batch.input_file_id)
    if input_file is None:
        message = f"The input file '{batch.input_file_id}' was deleted."
        await fail_batch(context, batch, lease, "input_file_missing", message)
        return
    estimator = await team_estimator(context, batch.team_id, batch.endpoint)
    figures = await read_figures(context.blobs, input_file.storage_key, input_file.line_count)
    async with context.blobs.local_copy(input_file.storage_key) as path:
        if figures is not None:
            estimated = await asyncio.to_thread(estimate_figures, figures, batch.endpoint, estimator)
        else:
            estimated = await asyncio.to_thread(estimate_lines, path, batch.endpoint, estimator)
        estimates, line_estimates = estimated
        placements: dict[str, list[Placement]] = {}
        decisions: list[RoutingDecision] = []
        estimated_cost = 0.0
        policy = None
        for name, estimate in estimates.items():
            try:
                resolved = context.offers.resolve(name)
                ranking = await rank(
                    context,
                    batch,
                    resolved,
                    requests=estimate.requests,
                    input_tokens=estimate.input_tokens,
                    output_tokens=estimate.output_tokens,
                )
            except UnknownModel as exc:
                message = f"Line {estimate.first_line}: {exc}" + ("" if str(exc).endswith("?") else ".")
                await fail_batch(context, batch, lease, "model_not_found", message, estimate.first_line)
                return
            except NoUsableProvider as exc:
                await fail_batch(context, batch, lease, "provider_unavailable", f"Cannot route model {name!r}: {exc}.")
                return
            except PolicyError as exc:
                await fail_batch(context, batch, lease, "routing_refused", f"Cannot route model {name!r}: {exc}.")
                return
            policy = ranking.policy
            taken = split_shares(ranking)
            baseline = context.offers.sync_baseline(resolved.model, estimate.input_tokens, estimate.output_tokens)
            pinned = resolved.pinned_provider is not None
            placements[name] = [Placement.of(context, choice, pinned, baseline) for choice in taken]
            estimated_cost += sum(choice.candidate.estimated_cost_usd for choice in taken)
            decisions.append(ranking.decision)
        counts = {name: estimate.requests for name, estimate in estimates.items()}
        canary = canary_size(context, batch, sum(counts.values()))
        # The canary and the rest each make a provider batch: where batches have a minimum (Bedrock), both must
        # reach it, else the job runs without a canary.
        floor = max(place.min_requests for places in placements.values() for place in places)
        if canary and floor > 1:
            canary = max(canary, floor)
            if sum(counts.values()) - canary < floor:
                log.info("batch %s runs without a canary: its providers take batches of at least %d", batch.id, floor)
                canary = 0
        plans = await asyncio.to_thread(
            split_into_shards,
            path,
            batch.id,
            batch.endpoint,
            placements,
            counts,
            context.blobs.scratch,
            functools.partial(shard_input_key, attempt=lease.token),
            canary,
            estimator,
            line_estimates,
        )
    crash_point("route.after_shards_written")
    freeze_point("route.after_shards_written")
    await publish_shards(context.blobs, plans)
    changed = False
    async with transaction(context.sessions) as session:
        refusal = await budgets.reserve(session, batch.team_id, batch.id, estimated_cost)
        if refusal is not None:
            raise Rollback
        for plan in plans:
            session.add(plan.shard(batch.id, held=canary > 0 and not plan.canary))
        for decision in decisions:
            session.add(decision)
        changed = await repo.update_batch_if(
            session,
            batch.id,
            expected_status="in_progress",
            values={
                "stage": "run",
                "policy": policy,
                "estimated_cost_usd": estimated_cost,
                "stage_attempts": 0,
                "providers": shard_db.providers_value(plan.placement.provider for plan in plans),
            },
            lease=lease,
        )
        if not changed:
            raise Rollback
    if not changed:
        await _discard(context, plans)
        if refusal is not None:
            await fail_batch(context, batch, lease, "budget_exceeded", refusal)
        return
    log.info("batch %s routed into %d shards (%s)", batch.id, len(plans), ", ".join(d.reason for d in decisions))


async def _discard(context: GatewayContext, plans: list[ShardPlan]) -> None:
    """Remove shard inputs this attempt published but no row will name."""
    for plan in plans:
        await context.blobs.delete(plan.key)


async def give_up(context: GatewayContext, batch: Batch, lease: Lease, code: str, message: str) -> None:
    """End a batch whose routing cannot run (its input is gone or unreadable); nothing was spent."""
    if code == "content_missing":
        code, message = "input_file_missing", f"The content of input file '{batch.input_file_id}' is missing."
    await fail_batch(context, batch, lease, code, f"Routing could not run: {message}")


def canary_size(context: GatewayContext, batch: Batch, requests: int) -> int:
    """Requests to run first as a canary: the batch's ``canary`` hint, else the deployment's default for
    large jobs; 0 when the job is not larger than the canary."""
    asked = (batch.metadata_ or {}).get("canary")
    routing = context.settings.routing
    if asked is not None:
        size = int(asked)
    elif routing.canary_requests and requests >= routing.canary_min_requests:
        size = routing.canary_requests
    else:
        size = 0
    return size if 0 < size < requests else 0
