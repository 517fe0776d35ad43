"""Placing work: ask the batch's policy to rank the offers for a model, and record why.

Used by the route stage for a batch's first placement and by collection for failover and retries
(``kind`` ``failover`` when a provider failed, ``retry`` when single requests failed). Every call
leaves a :class:`~gateway.db.models.RoutingDecision` with the candidates, their estimated costs, the
choice and the reason, which the admin API shows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from gateway.db.models import Batch, RoutingDecision
from gateway.routing.health import provider_states
from gateway.routing.needs import RoutingNeeds
from gateway.routing.offers import PricedOffer, ResolvedModel
from router_policies.base import Candidate, Hints, JobFacts, PolicyError, ProviderState, is_usable
from router_policies.registry import parse_hints


class NoUsableProvider(LookupError):
    """Nothing usable serves the model; the message says why, provider by provider."""


@dataclass(frozen=True)
class Choice:
    """A ranked candidate with the prices the engine records on its shard."""

    candidate: Candidate
    priced: PricedOffer

    @property
    def provider(self) -> str:
        """The provider's configured name."""
        return self.candidate.offer.provider


@dataclass(frozen=True)
class Ranking:
    """The policy's answer for one model of a batch."""

    policy: str
    choices: list[Choice]
    decision: RoutingDecision
    taken: list[Choice]
    """The choices that receive work: all of a split, else the first."""


def batch_hints(batch: Batch) -> Hints:
    """The batch's routing hints (validated when it was created)."""
    return parse_hints(batch.metadata_ or {})


def policy_name(context: RoutingNeeds, batch: Batch) -> str:
    """The policy of a batch: its own ``policy`` hint or the deployment's default."""
    return batch.policy or batch_hints(batch).policy or context.settings.routing.default_policy


async def rank(
    context: RoutingNeeds,
    batch: Batch,
    resolved: ResolvedModel,
    *,
    requests: int,
    input_tokens: int,
    output_tokens: int,
    kind: str = "route",
    exclude: frozenset[str] = frozenset(),
    cause: str | None = None,
    shard_id: str | None = None,
    single: bool = False,
    policy_override: str | None = None,
) -> Ranking:
    """Rank the offers of ``resolved`` for this part of the batch; raises :class:`NoUsableProvider`
    or :class:`PolicyError` (the caller fails the requests with its message).

    ``single`` places everything on the best candidate even when the policy would split; ``policy_override``
    names a policy to use instead of the batch's.
    """
    hints = batch_hints(batch)
    name = policy_override or policy_name(context, batch)
    policy = context.policies.get(name)
    states = await provider_states(context)
    blocked = {p: replace(states[p], healthy=False) for p in exclude if p in states}
    states = {**states, **blocked}
    serving = {name for name in states if context.providers.get(name).serves(batch.endpoint)}
    # A provider whose batches need more requests than this part has (Bedrock's record minimum) cannot take it.
    offering = {o.offer.provider for o in resolved.offers}
    minimums = {name: context.providers.get(name).min_requests() for name in serving & offering}
    too_small = {name for name, least in minimums.items() if least > requests}
    serving -= too_small
    offers = [o for o in resolved.offers if o.offer.provider in serving]
    if hints.tier is not None:
        offers = [o for o in offers if o.offer.service == hints.tier]
    now = datetime.now(UTC)
    elapsed = max(0.0, time.time() - batch.created_at)
    window_s = float(batch.expires_at - batch.created_at) if batch.expires_at else 24 * 3600.0
    # The first placement gets the window the client asked for (a 24h provider fits a 24h window);
    # a failover gets what is left of it.
    remaining_s = window_s if kind == "route" else window_s - elapsed
    job = JobFacts(
        model=resolved.model,
        request_count=requests,
        est_input_tokens=input_tokens,
        est_output_tokens=output_tokens,
        completion_window_s=max(1.0, remaining_s),
        deadline_s=None if hints.deadline_s is None else max(1.0, hints.deadline_s - elapsed),
        now=now,
        hints=hints,
    )
    candidates = policy.rank(job, [o.offer for o in offers], states)
    by_offer = {(o.offer.provider, o.offer.provider_model, o.offer.service): o for o in offers}
    choices = [Choice(c, by_offer[(c.offer.provider, c.offer.provider_model, c.offer.service)]) for c in candidates]
    choices = [c for c in choices if is_usable(states.get(c.provider))]
    if not choices:
        if hints.tier is not None and not offers:
            raise NoUsableProvider(f"no enabled provider offers {resolved.model!r} at the {hints.tier} tier")
        small = {name: minimums[name] for name in too_small}
        raise NoUsableProvider(_why_none(resolved, states, exclude, serving, batch.endpoint, small, requests))
    taken = choices[:1] if single else _taken(choices)
    if len(taken) > 1 and any(c.candidate.share * requests < minimums.get(c.provider, 1) for c in taken):
        # A split would leave a provider less than its minimum: the best takes it all (at its full-job cost).
        best = choices[0]
        whole = replace(
            best.candidate, share=1.0, estimated_cost_usd=best.candidate.estimated_cost_usd / best.candidate.share
        )
        taken = [replace(best, candidate=whole)]
    decision = RoutingDecision(
        batch_id=batch.id,
        shard_id=shard_id,
        kind=kind,
        model=resolved.model,
        policy=name,
        chosen_provider=",".join(c.provider for c in taken),
        reason=" + ".join(f"{c.provider}: {c.candidate.reason}" for c in taken)
        + _passed_over({name: minimums[name] for name in too_small}, requests),
        cause=cause,
        request_count=requests,
        candidates=[candidate_view(c) for c in choices],
    )
    return Ranking(name, choices, decision, taken)


def _passed_over(too_small: Mapping[str, int], requests: int) -> str:
    """What the decision's reason adds about providers left out because the work is below their minimum."""
    if not too_small:
        return ""
    least = ", ".join(f"{name} takes batches of at least {too_small[name]}" for name in sorted(too_small))
    return f" (passed over, {requests} requests: {least})"


def _taken(choices: list[Choice]) -> list[Choice]:
    """The candidates that receive work: all of a split, else the first."""
    if choices[0].candidate.share < 1.0:
        return [c for c in choices if c.candidate.share > 0]
    return choices[:1]


def split_shares(ranking: Ranking) -> list[Choice]:
    """The choices that take part in the placement, with their shares (one choice at 1.0 unless split)."""
    return ranking.taken


def candidate_view(choice: Choice) -> dict[str, object]:
    """A candidate as stored in a decision and shown by the admin API."""
    candidate = choice.candidate
    return {
        "provider": candidate.offer.provider,
        "provider_model": candidate.offer.provider_model,
        "mode": candidate.offer.mode,
        "tier": candidate.offer.service,
        "estimated_cost_usd": round(candidate.estimated_cost_usd, 6),
        "share": candidate.share,
        "start_at": candidate.start_at.timestamp() if candidate.start_at else None,
        "priced": choice.priced.source is not None,
        "reason": candidate.reason,
    }


def _why_none(
    resolved: ResolvedModel,
    states: Mapping[str, ProviderState],
    exclude: frozenset[str],
    serving: set[str],
    endpoint: str,
    minimums: Mapping[str, int],
    requests: int,
) -> str:
    reasons = []
    for priced in resolved.offers:
        provider = priced.offer.provider
        state = states.get(provider)
        if provider in exclude:
            reasons.append(f"{provider}: failed this work already")
        elif state is None:
            reasons.append(f"{provider}: not enabled")
        elif provider in minimums:
            least = minimums[provider]
            reasons.append(f"{provider}: takes batches of at least {least} requests, this part has {requests}")
        elif provider not in serving:
            reasons.append(f"{provider}: does not serve {endpoint}")
        elif state.circuit == "open":
            reasons.append(f"{provider}: circuit open (provider failing)")
    detail = "; ".join(reasons) or "no provider serves it"
    if resolved.pinned_provider:
        return (
            f"model {resolved.requested!r} pins provider {resolved.pinned_provider!r}, which is unavailable "
            f"({detail}); a pinned batch is never moved to another provider"
        )
    return f"no usable provider for model {resolved.model!r} ({detail})"


__all__ = ["Choice", "NoUsableProvider", "PolicyError", "Ranking", "batch_hints", "policy_name", "rank"]
