"""Moving requests that did not finish to where they can: retries and failover.

When a shard is collected, its requests that ended with a retryable error (429, 5xx, timeouts) or
never ran because their provider batch failed, expired at the provider, stalled or was abandoned
are *moved*: their input lines become a follow-up shard placed by the batch's policy. A provider
that failed the whole shard is left out of that placement (``failover``); single failed requests
may go back to the same provider (``retry``), and so may a whole shard when no other provider serves
its model. Requests already answered are never moved, so no
request is answered twice. A request is tried at most ``routing.max_request_attempts`` times; a
pinned shard moves only within its pinned provider; nothing moves once the batch is cancelled or
its completion window has passed. A move is priced at the new offer's rate and must fit the batch's hard
budgets (:mod:`gateway.billing.guard`): the best-ranked offer that fits is taken. When no provider can take
the requests, they get error lines saying why (``budget_exceeded`` when none fits the budget).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path

from gateway.billing import guard
from gateway.billing.estimate import cost_usd, team_estimator
from gateway.context import GatewayContext
from gateway.db.leases import Lease
from gateway.db.models import Batch, RoutingDecision, Shard
from gateway.db.unit_of_work import reading
from gateway.pipeline.lifecycle import PROVIDER_FAILURE_TEXT, PROVIDER_FAILURES, attempt_key
from gateway.pipeline.shard_plans import Placement, ShardPlan, publish_shards, split_into_shards
from gateway.routing.placement import Choice, NoUsableProvider, rank
from router_policies.base import PolicyError

UNTRIED = frozenset({"rerouted", "budget"})
"""End reasons of shards whose unfinished requests were never tried (moved before they were sent, or paused
for a spent budget): moving them costs no attempt."""


def may_move(batch_stopping: bool, shard: Shard, max_attempts: int) -> bool:
    """Whether the shard's unfinished requests may still go elsewhere."""
    if batch_stopping or shard.end_reason == "canary_failed":
        return False
    return shard.end_reason in UNTRIED or shard.generation + 1 < max_attempts


@dataclass
class Move:
    """Where a shard's moved requests go: follow-up shards, or nowhere (``error``)."""

    decision: RoutingDecision
    plans: list[ShardPlan] = field(default_factory=list)
    error: str | None = None
    code: str = "provider_unavailable"
    """Error code of the requests' lines when they are moved nowhere (``budget_exceeded``: the move did not fit)."""

    def shards(self, batch_id: str, parent: Shard, first_seq: int) -> list[Shard]:
        """Rows for the follow-up shards, numbered from ``first_seq``."""
        rows = []
        # Requests moved before they were ever sent keep their count of tries.
        generation = parent.generation + (0 if parent.end_reason in UNTRIED else 1)
        for index, plan in enumerate(self.plans):
            row = plan.shard(batch_id, generation=generation, parent_id=parent.id)
            row.seq, row.canary = first_seq + index, parent.canary
            rows.append(row)
        return rows


def cause_of(shard: Shard, moved: int) -> tuple[str, str, bool]:
    """``(kind, cause, provider_failed)`` for moving ``moved`` requests off ``shard``."""
    reason = shard.end_reason or "completed"
    if reason == "budget":
        why = shard.last_error or "a hard budget is spent"
        return "retry", f"{moved} request(s) paused at {shard.provider}: {why}", False
    if reason in PROVIDER_FAILURES:
        detail = f": {shard.last_error}" if shard.last_error else ""
        return "failover", f"{shard.provider} {PROVIDER_FAILURE_TEXT.get(reason, reason)}{detail}", True
    return "retry", f"{moved} request(s) failed at {shard.provider} with retryable errors (429, 5xx, timeouts)", False


async def plan_move(
    context: GatewayContext, batch: Batch, shard: Shard, lease: Lease, moved_path: Path, moved: int
) -> Move:
    """Rank offers for the moved requests and write the follow-up shards' inputs (rows not yet added)."""
    kind, cause, provider_failed = cause_of(shard, moved)
    name = f"{shard.provider}/{shard.model}" if shard.pinned else shard.model
    share = moved / max(1, shard.request_count)
    try:
        resolved = context.offers.resolve(name)
        ranked = functools.partial(
            rank,
            context,
            batch,
            resolved,
            requests=moved,
            input_tokens=int(shard.estimated_input_tokens * share),
            output_tokens=int(shard.estimated_output_tokens * share),
            kind=kind,
            cause=cause,
            shard_id=shard.id,
            single=True,
            # Work that fell behind its deadline goes to the fastest tier that fits, whatever the batch's policy.
            policy_override="deadline" if shard.end_reason == "behind" else None,
        )
        try:
            ranking = await ranked(exclude=frozenset({shard.provider}) if provider_failed else frozenset())
        except NoUsableProvider:
            if not provider_failed:
                raise
            # Nobody else serves it: the same provider again, if it is still usable.
            ranking = await ranked()
    except (LookupError, NoUsableProvider, PolicyError) as exc:
        decision = RoutingDecision(
            batch_id=batch.id,
            shard_id=shard.id,
            kind=kind,
            model=shard.model,
            policy=batch.policy or context.settings.routing.default_policy,
            chosen_provider=None,
            reason=f"not moved: {exc}",
            cause=cause,
            request_count=moved,
        )
        return Move(decision, error=f"{cause}; no other placement: {exc}")
    chosen, refusals = await _within_budget(context, batch, shard, ranking.choices, share)
    if chosen is None:
        reason = f"not moved: no placement fits the hard budget ({'; '.join(refusals)})"
        decision = replace_decision(ranking.decision, None, reason)
        return Move(decision, error=f"{cause}; {reason}", code=guard.BUDGET_ERROR)
    decision = ranking.decision
    if refusals or chosen is not ranking.choices[0]:
        refused = "; ".join(refusals)
        note = f"{chosen.provider}: {chosen.candidate.reason}; re-priced for the hard budget ({refused})"
        decision = replace_decision(decision, chosen.provider, note)
    baseline = (shard.list_input_per_mtok, shard.list_output_per_mtok)
    placement = Placement.of(context, chosen, shard.pinned, baseline)
    estimator = await team_estimator(context, batch.team_id, batch.endpoint)
    plans = await asyncio.to_thread(
        split_into_shards,
        moved_path,
        batch.id,
        batch.endpoint,
        {shard.provider_model: [placement]},
        {shard.provider_model: moved},
        context.blobs.scratch,
        lambda _batch_id, index: attempt_key(shard, lease, f"next-{index}.in.jsonl"),
        estimator=estimator,
    )
    await publish_shards(context.blobs, plans)
    return Move(decision, plans)


async def _within_budget(
    context: GatewayContext, batch: Batch, shard: Shard, choices: list[Choice], share: float
) -> tuple[Choice | None, list[str]]:
    """The best-ranked choice whose price for the moved requests fits the batch's hard budgets, and why the
    ones before it did not. Requests paused for a spent budget are not checked: they wait for it anyway."""
    if shard.end_reason == "budget":
        return choices[0], []
    old = shard.estimated_cost_usd * share
    moved_in, moved_out = int(shard.estimated_input_tokens * share), int(shard.estimated_output_tokens * share)
    refusals: list[str] = []
    for choice in choices:
        new = cost_usd(moved_in, moved_out, choice.priced.paid_rates)
        async with reading(context.sessions) as session:
            refusal = await guard.move_fits(session, batch, old, new)
        if refusal is None:
            return choice, refusals
        refusals.append(f"{choice.provider} at ${new:.4f}: {refusal}")
    return None, refusals


def replace_decision(decision: RoutingDecision, chosen: str | None, reason: str) -> RoutingDecision:
    """The decision with another choice and reason (the candidates stay)."""
    return RoutingDecision(
        batch_id=decision.batch_id,
        shard_id=decision.shard_id,
        kind=decision.kind,
        model=decision.model,
        policy=decision.policy,
        chosen_provider=chosen,
        reason=reason,
        cause=decision.cause,
        request_count=decision.request_count,
        candidates=decision.candidates,
    )
