"""The default policy: lowest estimated cost among usable offers.

Time plays no part beyond tie-breaking (observed p90 turnaround, then provider and model name);
use the ``deadline`` policy when results are needed sooner than the completion window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from router_policies.base import Candidate, JobFacts, Offer, ProviderState
from router_policies.helpers import estimate_duration, job_cost, observed_p90_s, usable_offers, within_cap


def cost_order(job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
    """Usable offers as candidates, cheapest first, each with its cost in the reason."""
    priced = []
    for offer in usable_offers(offers, states):
        run_s = estimate_duration(job, offer, states.get(offer.provider)).seconds
        p90 = observed_p90_s(offer, states)
        cost = job_cost(job, offer, run_s)
        turnaround = math.inf if p90 is None else p90
        priced.append((cost, turnaround, offer.provider, offer.provider_model, offer.service, offer))
    priced.sort(key=lambda row: row[:5])
    if not priced:
        return []
    best = priced[0][0]
    candidates = []
    for cost, *_, offer in priced:
        rate = {"batch": "batch rate", "standard": "sync rate"}.get(offer.service, f"{offer.service} rate")
        extra = "lowest estimated cost" if cost == best else f"+${cost - best:.4f} over the cheapest"
        candidates.append(Candidate(offer, cost, f"${cost:.4f} at {rate} ({extra})"))
    return candidates


class CheapestPolicy:
    """Lowest estimated total cost first."""

    name = "cheapest"

    def rank(self, job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
        """Usable offers by estimated cost; ties by observed p90 turnaround, then name."""
        return within_cap(job, cost_order(job, offers, states))
