"""The break-even advisor: for a job and a deadline, batch, synchronous fan-out, or both?

For each model of a quote (:mod:`gateway.billing.quote`) it compares the cheapest viable batch offer with
firing the same requests synchronously:

* a batch's expected turnaround is the provider's observed p50 / p90 for the model (finished shards), or its
  documented window (24 h) without observations, times the waves of shards the provider's in-flight cap
  makes the job run in;
* synchronous fan-out takes as long as the provider's configured rate limits allow (requests and tokens per
  minute; without limits an assumed 60 requests a minute, deliberately slow), at list price.

Then, for the deadline (the client's, else the completion window):

* ``batch`` when the batch p90 fits it, unless batching saves less than ``billing.min_batch_savings_usd``
  and fan-out fits too (a small job: flagged);
* ``fan-out`` when only fan-out fits;
* ``tiered`` when the batch p50 fits but not its p90 and fan-out alone is too slow: submit the batch and fan
  out what is still unfinished near the deadline;
* otherwise the faster of the two, flagged as missing the deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router_policies.base import DEFAULT_BATCH_TURNAROUND_S, DEFAULT_SYNC_REQUESTS_PER_MINUTE, ProviderState
from router_policies.helpers import format_seconds


@dataclass(frozen=True)
class Timing:
    """How long a job takes on one offer, and what the figure rests on."""

    p50_s: float
    p90_s: float
    basis: str


def batch_timing(
    state: ProviderState | None, provider_model: str, samples: int, requests: int, per_batch: int, in_flight: int
) -> Timing:
    """Expected turnaround of a job as provider batches: observed p50/p90 (or the documented 24 h window) times
    the waves of shards the provider's limits make it run in."""
    shards = max(1, math.ceil(requests / max(1, per_batch)))
    waves = max(1, math.ceil(shards / max(1, in_flight)))
    p50 = state.turnaround_p50_s.get(provider_model) if state is not None else None
    p90 = state.turnaround_p90_s.get(provider_model) if state is not None else None
    if p50 is not None and p90 is not None:
        basis = f"observed over {samples} finished shard(s)"
    else:
        p50 = p90 = DEFAULT_BATCH_TURNAROUND_S
        basis = "documented 24h window, no observations"
    if waves > 1:
        basis += f", {waves} waves of {shards} shards"
    return Timing(p50 * waves, p90 * waves, basis)


def fanout_timing(requests: int, tokens: int, requests_per_minute: int | None, tokens_per_minute: int | None) -> Timing:
    """How long firing the requests synchronously takes at the configured rate limits."""
    limits: list[tuple[float, str]] = []
    if requests_per_minute:
        limits.append((requests / requests_per_minute, f"{requests_per_minute:,} requests/min"))
    if tokens_per_minute:
        limits.append((tokens / tokens_per_minute, f"{tokens_per_minute:,} tokens/min"))
    if not limits:
        rpm = DEFAULT_SYNC_REQUESTS_PER_MINUTE
        limits.append((requests / rpm, f"no rate limit configured: assumed {rpm:g} requests/min"))
    minutes, basis = max(limits)
    return Timing(minutes * 60, minutes * 60, basis)


@dataclass(frozen=True)
class Option:
    """One way to run a model's requests, as the advisor weighs it."""

    provider: str
    cost_usd: float
    timing: Timing


@dataclass(frozen=True)
class Advice:
    """The advisor's recommendation for one model of a job."""

    model: str
    recommendation: str
    """``batch``, ``fan-out`` or ``tiered``."""
    reason: str
    """One line: why, with the figures."""
    deadline_s: float
    meets_deadline: bool
    small_job: bool
    """Batching saves less than the configured minimum."""
    batch_provider: str | None
    batch_cost_usd: float | None
    fanout_provider: str | None
    fanout_cost_usd: float | None
    savings_usd: float | None
    """Fan-out cost minus batch cost."""


def _usd(amount: float) -> str:
    return f"${amount:.4f}" if abs(amount) < 1 else f"${amount:,.2f}"


def advise(
    model: str,
    batch: Option | None,
    fanouts: list[Option],
    deadline_s: float,
    min_savings_usd: float,
    deadline_named: bool,
) -> Advice:
    """Recommend batch, fan-out or tiered for one model (see the module docstring)."""
    what = "deadline" if deadline_named else "completion window"
    limit = f"the {format_seconds(deadline_s)} {what}"
    fitting = [o for o in fanouts if o.timing.p90_s <= deadline_s]
    fanout = (
        min(fitting, key=lambda o: o.cost_usd) if fitting else min(fanouts, key=lambda o: o.timing.p90_s, default=None)
    )
    fanout_fits = bool(fitting)

    def advice(recommendation: str, reason: str, meets: bool, small: bool = False) -> Advice:
        savings = fanout.cost_usd - batch.cost_usd if fanout is not None and batch is not None else None
        return Advice(
            model=model,
            recommendation=recommendation,
            reason=reason,
            deadline_s=deadline_s,
            meets_deadline=meets,
            small_job=small,
            batch_provider=batch.provider if batch else None,
            batch_cost_usd=batch.cost_usd if batch else None,
            fanout_provider=fanout.provider if fanout else None,
            fanout_cost_usd=fanout.cost_usd if fanout else None,
            savings_usd=savings,
        )

    def fan_text(option: Option) -> str:
        return f"fan-out on {option.provider} takes ~{format_seconds(option.timing.p90_s)} ({option.timing.basis})"

    if batch is None and fanout is None:
        return advice("fan-out", "no viable offer", False)
    if batch is None:
        assert fanout is not None
        return advice("fan-out", f"no batch offer; {fan_text(fanout)} for {_usd(fanout.cost_usd)}", fanout_fits)
    batch_p90 = f"p90 turnaround {format_seconds(batch.timing.p90_s)} ({batch.timing.basis})"
    if batch.timing.p90_s <= deadline_s:
        if fanout is not None and fanout_fits:
            savings = fanout.cost_usd - batch.cost_usd
            if savings < min_savings_usd:
                return advice(
                    "fan-out",
                    f"batching saves only {_usd(savings)} (under {_usd(min_savings_usd)}); "
                    f"{fan_text(fanout)} for {_usd(fanout.cost_usd)}",
                    True,
                    small=True,
                )
            return advice(
                "batch",
                f"batch on {batch.provider}: {_usd(batch.cost_usd)} vs {_usd(fanout.cost_usd)} fanned out "
                f"(saves {_usd(savings)}); {batch_p90} fits {limit}",
                True,
            )
        return advice("batch", f"batch on {batch.provider} for {_usd(batch.cost_usd)}: {batch_p90} fits {limit}", True)
    if fanout is not None and fanout_fits:
        extra = fanout.cost_usd - batch.cost_usd
        return advice(
            "fan-out",
            f"batch {batch_p90} misses {limit}; {fan_text(fanout)} for {_usd(fanout.cost_usd)} "
            f"({_usd(extra)} more than batch)",
            True,
        )
    if batch.timing.p50_s <= deadline_s:
        slow = f"; {fan_text(fanout)}" if fanout is not None else ""
        return advice(
            "tiered",
            f"batch p50 {format_seconds(batch.timing.p50_s)} fits {limit} but its p90 "
            f"{format_seconds(batch.timing.p90_s)} does not{slow}: submit the batch on {batch.provider} and fan out "
            "what is unfinished near the deadline",
            True,
        )
    if fanout is not None and fanout.timing.p90_s < batch.timing.p90_s:
        return advice("fan-out", f"nothing meets {limit}; {fan_text(fanout)}, the fastest", False)
    return advice("batch", f"nothing meets {limit}; batch on {batch.provider} ({batch_p90}) is the fastest", False)
