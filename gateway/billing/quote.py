"""What a batch input file would cost on every offer that can run it, and which one the policy picks.

Used by ``batchgw estimate FILE`` and ``POST /admin/estimate``. Token figures come from
:mod:`gateway.billing.estimate`; each offer is priced at its synchronous list price and at the rate it
would actually charge (the batch rate for provider batches), and the policy ranks the offers exactly
as the route stage would, with the providers' current health.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.billing.estimate import ModelEstimate, cost_usd, estimate_file
from gateway.context import GatewayContext
from gateway.db.models import Batch
from gateway.routing.offers import UnknownModel
from gateway.routing.placement import NoUsableProvider, rank
from router_policies.base import PolicyError


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
    sync_cost_usd: float
    cost_usd: float
    priced: bool
    rank: int | None
    """1 for the policy's choice, then its order; None when the policy ruled the offer out."""
    reason: str

    @property
    def savings_usd(self) -> float:
        """What the offer saves against the synchronous list price."""
        return self.sync_cost_usd - self.cost_usd


@dataclass
class Quote:
    """Every model of a file with its offers, and problems that would stop routing."""

    policy: str
    rows: list[QuoteRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def chosen_cost_usd(self) -> float:
        """Estimated cost of the policy's choices."""
        return sum(row.cost_usd for row in self.rows if row.rank == 1)


async def quote_file(
    context: GatewayContext,
    path: Path,
    *,
    endpoint: str = "/v1/chat/completions",
    model: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Quote:
    """Price the requests of ``path`` (``model`` replaces each line's model) on every offer."""
    estimates = await asyncio.to_thread(estimate_file, path, endpoint)
    if model is not None:
        merged = ModelEstimate(model=model, first_line=1)
        for entry in estimates.values():
            merged.requests += entry.requests
            merged.input_tokens += entry.input_tokens
            merged.output_tokens += entry.output_tokens
        estimates = {model: merged} if merged.requests else {}
    now = int(time.time())
    probe = Batch(
        team_id="",
        input_file_id="",
        endpoint=endpoint,
        completion_window="24h",
        metadata_=metadata,
        created_at=now,
        expires_at=now + 24 * 3600,
    )
    quote = Quote(policy=(metadata or {}).get("policy") or context.settings.routing.default_policy)
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
        for priced in resolved.offers:
            position, reason = order.get(priced.offer, (None, "not ranked by the policy (unusable or over a cap)"))
            quote.rows.append(
                QuoteRow(
                    model=resolved.model,
                    provider=priced.offer.provider,
                    provider_model=priced.offer.provider_model,
                    mode=priced.offer.mode,
                    requests=estimate.requests,
                    input_tokens=estimate.input_tokens,
                    output_tokens=estimate.output_tokens,
                    sync_cost_usd=cost_usd(estimate.input_tokens, estimate.output_tokens, priced.list_rates),
                    cost_usd=cost_usd(estimate.input_tokens, estimate.output_tokens, priced.paid_rates),
                    priced=priced.source is not None,
                    rank=position,
                    reason=reason,
                )
            )
    quote.rows.sort(key=lambda r: (r.model, r.rank is None, r.rank or 0, r.cost_usd))
    return quote
