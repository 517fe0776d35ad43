"""Estimates and small building blocks shared by the built-in policies; optional for policy authors.

Everything here is built only on :mod:`router_policies.base`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from router_policies.base import (
    DEFAULT_BATCH_TURNAROUND_S,
    DEFAULT_SYNC_REQUESTS_PER_MINUTE,
    BudgetExceeded,
    Candidate,
    JobFacts,
    Offer,
    ProviderState,
    estimate_cost,
    is_usable,
)

_DAY_S = 24 * 3600
FLEX_LATENCY_S = 15 * 60.0
"""Flex requests answer within minutes ("1-15 min target"); counted once, as the last wave's wait."""


def usable_offers(offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Offer]:
    """The offers whose provider is usable, in their given order."""
    return [offer for offer in offers if is_usable(states.get(offer.provider))]


def observed_p90_s(offer: Offer, states: Mapping[str, ProviderState]) -> float | None:
    """The provider's observed p90 batch turnaround for this offer's model, if any."""
    state = states.get(offer.provider)
    return None if state is None else state.turnaround_p90_s.get(offer.provider_model)


@dataclass(frozen=True)
class Duration:
    """An estimated run time and what it rests on."""

    seconds: float
    basis: str


def estimate_duration(job: JobFacts, offer: Offer, state: ProviderState | None) -> Duration:
    """How long the job takes on this offer once started, conservatively.

    Batch: the observed p90 turnaround, else :data:`DEFAULT_BATCH_TURNAROUND_S`. Sync fan-out: the
    slower of the request and token rate limits (:data:`DEFAULT_SYNC_REQUESTS_PER_MINUTE` if none
    is known), plus :data:`FLEX_LATENCY_S` at the flex tier. A known queue wait is added to both.
    """
    wait = state.queue_wait_s if state is not None and state.queue_wait_s else 0.0
    if offer.mode == "batch":
        p90 = state.turnaround_p90_s.get(offer.provider_model) if state is not None else None
        if p90 is not None:
            return Duration(p90 + wait, "observed p90")
        return Duration(DEFAULT_BATCH_TURNAROUND_S + wait, "default, no observations")
    rpm = state.requests_per_minute if state is not None else None
    tpm = state.tokens_per_minute if state is not None else None
    if not rpm and not tpm:
        rpm = DEFAULT_SYNC_REQUESTS_PER_MINUTE
        limits = [(job.request_count / rpm, f"default {rpm:g} rpm")]
    else:
        limits = []
        if rpm:
            limits.append((job.request_count / rpm, f"{rpm:g} rpm"))
        if tpm:
            limits.append(((job.est_input_tokens + job.est_output_tokens) / tpm, f"{tpm:g} tpm"))
    minutes, basis = max(limits)
    if offer.tier == "flex":
        return Duration(minutes * 60 + wait + FLEX_LATENCY_S, f"{basis} + flex latency up to {FLEX_LATENCY_S / 60:g}m")
    return Duration(minutes * 60 + wait, basis)


def job_cost(job: JobFacts, offer: Offer, run_s: float = 0.0, start: datetime | None = None) -> float:
    """The job's estimated USD on an offer started at ``start`` (default ``job.now``).

    A batch is priced at submission; sync fan-out is priced over its run time, so a price window
    that opens or closes mid-run counts for its part.
    """
    return estimate_cost(
        offer,
        job.est_input_tokens,
        job.est_output_tokens,
        at=start or job.now,
        duration_s=run_s if offer.mode == "sync" else 0.0,
    )


def within_cap(job: JobFacts, candidates: list[Candidate]) -> list[Candidate]:
    """Drop candidates over the job's cost cap; raise :class:`BudgetExceeded` if that drops them all."""
    cap = job.cost_cap_usd
    if cap is None or not candidates:
        return candidates
    kept = [c for c in candidates if c.estimated_cost_usd <= cap]
    if kept:
        return kept
    cheapest = min(candidates, key=lambda c: c.estimated_cost_usd)
    which = "max_cost_usd" if cap == job.hints.max_cost_usd else "the remaining budget"
    raise BudgetExceeded(
        f"the cheapest usable offer for {job.model!r} ({cheapest.offer.label}) is estimated at "
        f"${cheapest.estimated_cost_usd:.4f}, above {which} of ${cap:.4f}"
    )


def format_seconds(seconds: float) -> str:
    """Compact duration for reasons: ``45s``, ``17m``, ``3.5h``, ``2.0d``."""
    if not math.isfinite(seconds):
        return "unbounded"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * _DAY_S:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / _DAY_S:.1f}d"
