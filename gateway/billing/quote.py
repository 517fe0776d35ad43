"""What a batch input file would cost on every offer that can run it, how long it would take, and what to do.

Used by ``batchgw estimate FILE``, ``POST /admin/estimate`` and ``POST /v1/estimates``. Token figures come
from :mod:`gateway.billing.estimate` (learned from the team's past requests when a team is given), with a
range (p50-p90) and their basis; each offer is priced at its synchronous list price and at the rate it would
actually charge (the batch rate for provider batches), and the policy ranks the offers exactly as the route
stage would, with the providers' current health. Each offer also shows its expected turnaround and how long
synchronous fan-out would take at its configured rate limits, and :mod:`gateway.billing.advisor` recommends
batch, fan-out or tiered for the deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.billing.advisor import Advice, Option, Timing, advise, batch_timing, fanout_timing
from gateway.billing.estimate import ModelEstimate, cost_usd, estimate_file, team_estimator
from gateway.context import GatewayContext
from gateway.db import routing as routing_db
from gateway.db.models import Batch
from gateway.db.unit_of_work import reading
from gateway.errors import UnknownModel
from gateway.routing.health import provider_states
from gateway.routing.placement import NoUsableProvider, rank
from router_policies.base import DEFAULT_BATCH_TURNAROUND_S, PolicyError
from router_policies.helpers import FLEX_LATENCY_S
from router_policies.registry import parse_hints


@dataclass(frozen=True)
class QuoteRow:
    """One offer for one model of the file."""

    model: str
    provider: str
    provider_model: str
    mode: str
    requests: int
    input_tokens: int
    output_tokens: int
    output_tokens_low: int
    """Output tokens if every request wrote the p50 of past requests (the same as ``output_tokens`` without
    history)."""
    output_tokens_high: int
    """Output tokens at the p90 of past requests."""
    basis: str
    """What the token estimate rests on: ``from 12,000 past requests`` or ``no history: ...``."""
    sync_cost_usd: float
    cost_usd: float
    cost_low_usd: float
    cost_high_usd: float
    priced: bool
    rank: int | None
    """1 for the policy's choice, then its order; None when the policy ruled the offer out."""
    reason: str
    turnaround_p50_s: float
    turnaround_p90_s: float
    turnaround_basis: str
    fanout_s: float
    """How long firing the requests synchronously at this provider would take at its configured rate limits."""
    fanout_basis: str

    @property
    def savings_usd(self) -> float:
        """What the offer saves against the synchronous list price."""
        return self.sync_cost_usd - self.cost_usd


@dataclass
class Quote:
    """Every model of a file with its offers, the advisor's recommendation, and problems that would stop routing."""

    policy: str
    rows: list[QuoteRow] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def chosen_cost_usd(self) -> float:
        """Estimated cost of the policy's choices."""
        return sum(row.cost_usd for row in self.rows if row.rank == 1)

    @property
    def chosen_range_usd(self) -> tuple[float, float]:
        """The same at the p50 and p90 of past requests."""
        chosen = [row for row in self.rows if row.rank == 1]
        return sum(row.cost_low_usd for row in chosen), sum(row.cost_high_usd for row in chosen)


async def quote_file(
    context: GatewayContext,
    path: Path,
    *,
    endpoint: str = "/v1/chat/completions",
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    team_id: str | None = None,
) -> Quote:
    """Price the requests of ``path`` (``model`` replaces each line's model) on every offer, as the team's
    batch with ``metadata`` (routing hints: ``policy``, ``deadline``...) would be."""
    estimator = await team_estimator(context, team_id, endpoint)
    estimates = await asyncio.to_thread(estimate_file, path, endpoint, estimator)
    if model is not None:
        merged = ModelEstimate(model=model, first_line=1, basis=estimator.basis(model).describe())
        for entry in estimates.values():
            merged.merged_with(entry)
        estimates = {model: merged} if merged.requests else {}
    now = int(time.time())
    probe = Batch(
        team_id=team_id or "",
        input_file_id="",
        endpoint=endpoint,
        completion_window="24h",
        metadata_=metadata,
        created_at=now,
        expires_at=now + 24 * 3600,
    )
    hints = parse_hints(metadata or {})
    deadline_s = hints.deadline_s or DEFAULT_BATCH_TURNAROUND_S
    states = await provider_states(context)
    async with reading(context.sessions) as session:
        samples = await routing_db.turnaround_samples(session, context.settings.routing.turnaround_samples)
    quote = Quote(policy=hints.policy or context.settings.routing.default_policy)
    for name, estimate in estimates.items():
        try:
            resolved = context.offers.resolve(name)
        except UnknownModel as exc:
            quote.problems.append(str(exc))
            continue
        try:
            ranking = await rank(
                context,
                probe,
                resolved,
                requests=estimate.requests,
                input_tokens=estimate.input_tokens,
                output_tokens=estimate.output_tokens,
            )
            order = {c.candidate.offer: (i + 1, c.candidate.reason) for i, c in enumerate(ranking.choices)}
        except (NoUsableProvider, PolicyError) as exc:
            quote.problems.append(f"{name}: {exc}")
            order = {}
        rows = []
        for priced in resolved.offers:
            offer = priced.offer
            position, reason = order.get(offer, (None, "not ranked by the policy (unusable or over a cap)"))
            limits = context.providers.get(offer.provider).config.limits
            fanout = fanout_timing(
                estimate.requests,
                estimate.input_tokens + estimate.output_tokens,
                limits.requests_per_minute,
                limits.tokens_per_minute,
            )
            if offer.mode == "batch":
                timing = batch_timing(
                    states.get(offer.provider),
                    offer.provider_model,
                    len(samples.get((offer.provider, offer.provider_model), [])),
                    estimate.requests,
                    limits.max_requests_per_batch,
                    limits.max_batches_in_flight,
                )
            elif offer.tier == "flex":
                basis = f"fan-out at {fanout.basis}, flex answers within {FLEX_LATENCY_S / 60:g}m"
                timing = Timing(fanout.p50_s, fanout.p90_s + FLEX_LATENCY_S, basis)
            else:
                timing = Timing(fanout.p50_s, fanout.p90_s, f"fan-out at {fanout.basis}")
            paid = priced.paid_rates
            rows.append(
                QuoteRow(
                    model=resolved.model,
                    provider=offer.provider,
                    provider_model=offer.provider_model,
                    mode=offer.run_mode,
                    requests=estimate.requests,
                    input_tokens=estimate.input_tokens,
                    output_tokens=estimate.output_tokens,
                    output_tokens_low=estimate.output_low,
                    output_tokens_high=estimate.output_high,
                    basis=estimate.basis,
                    sync_cost_usd=cost_usd(estimate.input_tokens, estimate.output_tokens, priced.list_rates),
                    cost_usd=cost_usd(estimate.input_tokens, estimate.output_tokens, paid),
                    cost_low_usd=cost_usd(estimate.input_tokens, estimate.output_low, paid),
                    cost_high_usd=cost_usd(estimate.input_tokens, estimate.output_high, paid),
                    priced=priced.source is not None,
                    rank=position,
                    reason=reason,
                    turnaround_p50_s=timing.p50_s,
                    turnaround_p90_s=timing.p90_s,
                    turnaround_basis=timing.basis,
                    fanout_s=fanout.p90_s,
                    fanout_basis=fanout.basis,
                )
            )
        quote.rows.extend(rows)
        quote.advice.append(_advise(context, resolved.model, rows, deadline_s, hints.deadline_s is not None))
    quote.rows.sort(key=lambda r: (r.model, r.rank is None, r.rank or 0, r.cost_usd))
    return quote


def _advise(context: GatewayContext, model: str, rows: list[QuoteRow], deadline_s: float, named: bool) -> Advice:
    viable = [row for row in rows if row.rank is not None] or rows
    batches = [row for row in viable if row.mode == "batch"]
    cheapest = min(batches, key=lambda row: row.cost_usd, default=None)
    batch = (
        Option(cheapest.provider, cheapest.cost_usd, Timing(cheapest.turnaround_p50_s, cheapest.turnaround_p90_s,
                                                            cheapest.turnaround_basis))
        if cheapest is not None
        else None
    )  # fmt: skip
    fanouts = [
        Option(row.provider, row.sync_cost_usd, Timing(row.fanout_s, row.fanout_s, row.fanout_basis)) for row in viable
    ]
    return advise(model, batch, fanouts, deadline_s, context.settings.billing.min_batch_savings_usd, named)
