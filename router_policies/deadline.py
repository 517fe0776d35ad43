"""Cheapest offer expected to finish before the deadline.

A batch offer is expected to take its observed p90 turnaround, or 24h with no observations; sync
fan-out takes the time its rate limits allow (see :func:`router_policies.helpers.estimate_duration`).
The time limit is the ``deadline`` hint capped by the completion window, or the completion window
alone. Offers that fit come first, cheapest first; the others follow, fastest first, so the engine
can still choose the least late one when nothing fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router_policies.base import Candidate, JobFacts, Offer, ProviderState
from router_policies.helpers import Duration, estimate_duration, format_seconds, job_cost, usable_offers, within_cap

_TIER = {"batch": "batch tier", "standard": "sync fan-out tier", "flex": "flex tier", "priority": "priority tier"}


class DeadlinePolicy:
    """Cheapest offer whose conservative turnaround fits the deadline."""

    name = "deadline"

    def rank(self, job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
        """Fitting offers by cost, then late ones by estimated time."""
        limit = job.time_limit_s
        rows: list[tuple[Offer, Duration, float]] = []
        for offer in usable_offers(offers, states):
            duration = estimate_duration(job, offer, states.get(offer.provider))
            rows.append((offer, duration, job_cost(job, offer, duration.seconds)))
        fitting = sorted((r for r in rows if r[1].seconds <= limit), key=lambda r: (r[2], r[1].seconds, _name(r[0])))
        late = sorted((r for r in rows if r[1].seconds > limit), key=lambda r: (r[1].seconds, r[2], _name(r[0])))
        what = "deadline" if job.deadline_s is not None and job.deadline_s <= job.completion_window_s else "window"
        limit_text = f"{what} {format_seconds(limit)}"
        slower_batch = min((r[1] for r in late if r[0].mode == "batch"), key=lambda d: d.seconds, default=None)

        candidates = []
        for offer, duration, cost in fitting:
            why = f"{_TIER[offer.service]}: {format_seconds(duration.seconds)} ({duration.basis}) fits {limit_text}"
            if offer.mode == "sync" and slower_batch is not None:
                why += (
                    f"; batch tier needs {format_seconds(slower_batch.seconds)} ({slower_batch.basis}),"
                    f" too slow for the {what}"
                )
            candidates.append(Candidate(offer, cost, f"{why}; ${cost:.4f}"))
        for offer, duration, cost in late:
            why = f"{_TIER[offer.service]}: {format_seconds(duration.seconds)} ({duration.basis}) misses {limit_text}"
            if not fitting:
                why = "no offer fits; fastest first. " + why
            candidates.append(Candidate(offer, cost, f"{why}; ${cost:.4f}"))
        return within_cap(job, candidates)


def _name(offer: Offer) -> tuple[str, str, str]:
    return offer.provider, offer.provider_model, offer.service
