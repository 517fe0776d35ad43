"""Wait for a cheaper price window when the time limit allows.

For each usable offer the policy prices starting now and starting at the next start of each of its
price windows. A hold is offered (``start_at`` set) when it is cheaper than starting now and the
wait plus the conservative run time still fits the time limit (deadline capped by the completion
window). Sync fan-out is priced over its run, so a run that outlasts the window pays the normal
rate for the part outside it. All variants are ranked by cost, then by finish time; offers that
cannot finish in time at all come last, fastest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from router_policies.base import Candidate, JobFacts, Offer, PriceWindow, ProviderState
from router_policies.helpers import estimate_duration, format_seconds, job_cost, usable_offers, within_cap


@dataclass(frozen=True)
class _Variant:
    offer: Offer
    cost: float
    finish_s: float
    reason: str
    start_at: datetime | None = None

    def key(self) -> tuple[float, float, str, str, str]:
        return self.cost, self.finish_s, self.offer.provider, self.offer.provider_model, self.offer.mode


class OffpeakPolicy:
    """Cheapest of "start now" and "hold until a cheaper window" within the time limit."""

    name = "offpeak"

    def rank(self, job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
        """Held and immediate variants by cost; late offers last."""
        limit = job.time_limit_s
        fitting: list[_Variant] = []
        late: list[_Variant] = []
        for offer in usable_offers(offers, states):
            duration = estimate_duration(job, offer, states.get(offer.provider))
            run_s = duration.seconds
            now_cost = job_cost(job, offer, run_s)
            held = self._best_hold(job, offer, run_s, now_cost, limit)
            if held is not None:
                fitting.append(held)
            now_text = f"start now: ${now_cost:.4f}, done in ~{format_seconds(run_s)} ({duration.basis})"
            current = next((w for w in offer.price_windows if w.contains(job.now)), None)
            if current is not None:
                now_text += f"; inside the {_window_name(current)} now"
            elif offer.price_windows and held is None:
                now_text += "; no cheaper window reachable within the time limit"
            variant = _Variant(offer, now_cost, run_s, now_text)
            if run_s <= limit:
                fitting.append(variant)
            else:
                late.append(
                    _Variant(offer, now_cost, run_s, f"misses the time limit {format_seconds(limit)}; {now_text}")
                )
        fitting.sort(key=_Variant.key)
        late.sort(key=lambda v: (v.finish_s, v.cost, v.offer.provider, v.offer.provider_model, v.offer.service))
        candidates = [Candidate(v.offer, v.cost, v.reason, v.start_at) for v in fitting + late]
        return within_cap(job, candidates)

    @staticmethod
    def _best_hold(job: JobFacts, offer: Offer, run_s: float, now_cost: float, limit: float) -> _Variant | None:
        best: _Variant | None = None
        for window in offer.price_windows:
            start = window.next_start(job.now)
            wait_s = (start - job.now).total_seconds()
            if wait_s <= 0 or wait_s + run_s > limit:
                continue
            cost = job_cost(job, offer, run_s, start)
            if cost >= now_cost:
                continue
            reason = (
                f"held {format_seconds(wait_s)} until {start:%H:%M} UTC for the {_window_name(window)}: "
                f"${cost:.4f} instead of ${now_cost:.4f} now; "
                f"done in ~{format_seconds(wait_s + run_s)}, within {format_seconds(limit)}"
            )
            variant = _Variant(offer, cost, wait_s + run_s, reason, start)
            if best is None or variant.key() < best.key():
                best = variant
        return best


def _window_name(window: PriceWindow) -> str:
    return f"{window.label!r} window" if window.label else "cheaper window"
