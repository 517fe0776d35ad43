"""Split a job across providers: by the client's ``weights`` hint, or to avoid queueing.

With weights, each weighted provider that is usable takes its weight's share on its cheapest offer;
the weights of unusable providers are redistributed. Without weights (or when no weighted provider
is usable), the cheapest provider takes what its free in-flight slots hold
(``free_slots * max_requests_per_batch`` requests), the next cheapest the next part, and so on;
what nobody can start now queues at the cheapest. When the cheapest provider can take the whole
job, the result is the plain cost ranking (alternatives, share 1.0 each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from router_policies.base import BudgetExceeded, Candidate, JobFacts, Offer, PolicyError, ProviderState
from router_policies.cheapest import cost_order
from router_policies.helpers import within_cap
from router_policies.prefer import check_known_providers


def _split(job: JobFacts, parts: list[tuple[Candidate, float, str]]) -> list[Candidate]:
    """Candidates with shares proportional to ``parts`` amounts; shares sum to exactly 1."""
    total = sum(amount for _, amount, _ in parts)
    parts = sorted(parts, key=lambda p: -p[1])
    shares = [amount / total for _, amount, _ in parts]
    shares[-1] = 1.0 - math.fsum(shares[:-1])
    result = [
        Candidate(
            c.offer,
            c.estimated_cost_usd * share,
            f"{why}; share {share:.1%} of ${c.estimated_cost_usd:.4f}",
            None,
            share,
        )
        for (c, _, why), share in zip(parts, shares, strict=True)
    ]
    cap = job.cost_cap_usd
    total_cost = math.fsum(c.estimated_cost_usd for c in result)
    if cap is not None and total_cost > cap:
        raise BudgetExceeded(
            f"splitting {job.model!r} across {', '.join(c.offer.provider for c in result)} is estimated at "
            f"${total_cost:.4f}, above the cost cap of ${cap:.4f}"
        )
    return result


class SpreadPolicy:
    """Several providers at once, by weight or by free capacity."""

    name = "spread"

    def rank(self, job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
        """A split (shares summing to 1), or the cost ranking when no split is needed."""
        weights = job.hints.weights
        if weights:
            if not any(w > 0 for w in weights.values()):
                raise PolicyError("the 'weights' hint needs at least one weight above 0")
            check_known_providers("weights", list(weights), offers, states)
        by_provider: dict[str, Candidate] = {}
        for candidate in cost_order(job, offers, states):
            by_provider.setdefault(candidate.offer.provider, candidate)

        note = ""
        if weights:
            parts = [
                (by_provider[name], weight, f"weight {weight:g}")
                for name, weight in weights.items()
                if weight > 0 and name in by_provider
            ]
            missing = [name for name, weight in weights.items() if weight > 0 and name not in by_provider]
            if len(parts) == 1:
                only = parts[0][0]
                why = f"the other weighted providers are unusable: {', '.join(missing)}" if missing else "single weight"
                reason = f"{why}; {only.reason}"
                return within_cap(job, [Candidate(only.offer, only.estimated_cost_usd, reason)])
            if parts:
                reasons = [(c, w, f"{why}; unusable: {', '.join(missing)}" if missing else why) for c, w, why in parts]
                return _split(job, reasons)
            note = "no weighted provider usable; "
        return self._by_capacity(job, list(by_provider.values()), cost_order(job, offers, states), states, note)

    @staticmethod
    def _by_capacity(
        job: JobFacts,
        per_provider: list[Candidate],
        ranking: list[Candidate],
        states: Mapping[str, ProviderState],
        note: str,
    ) -> list[Candidate]:
        if not per_provider:
            return []
        if job.request_count == 0:
            return within_cap(job, ranking)
        remaining = float(job.request_count)
        parts: list[tuple[Candidate, float, str]] = []
        for candidate in per_provider:
            state = states[candidate.offer.provider]
            per_shard = state.max_requests_per_batch or math.inf
            capacity = state.free_slots * per_shard if state.free_slots else 0.0
            take = min(remaining, capacity)
            if take > 0:
                parts.append((candidate, take, f"{note}{state.free_slots:g} free slot(s); {candidate.reason}"))
                remaining -= take
            if remaining <= 0:
                break
        if not parts or (len(parts) == 1 and remaining <= 0):
            chosen = parts[0][0] if parts else ranking[0]
            if not parts:
                why = "no free slots anywhere; queues"
            elif chosen is per_provider[0]:
                why = "whole job fits the cheapest provider's free slots"
            else:
                why = "cheaper providers' slots are full; whole job fits here"
            ranking = [chosen, *(c for c in ranking if c.offer != chosen.offer)]
            ranking[0] = Candidate(chosen.offer, chosen.estimated_cost_usd, f"{note}{why}; {chosen.reason}")
            return within_cap(job, ranking)
        if remaining > 0:
            cheapest = per_provider[0]
            queued = f"{note}queues the part no provider can start now; {cheapest.reason}"
            for index, (candidate, amount, why) in enumerate(parts):
                if candidate is cheapest:
                    parts[index] = (candidate, amount + remaining, f"{why}; plus the queued rest")
                    break
            else:
                parts.append((cheapest, remaining, queued))
        return _split(job, parts)
