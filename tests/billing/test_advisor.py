"""The break-even advisor: batch when its p90 fits the deadline, fan-out when only it does or when batching saves
too little, tiered when the batch usually makes it but fan-out is too slow; timings from observations, the
documented window, waves of shards and rate limits."""

from __future__ import annotations

import pytest

from gateway.billing.advisor import Option, Timing, advise, batch_timing, fanout_timing
from router_policies.base import ProviderState

HOUR = 3600.0


def option(provider: str, cost: float, p50_h: float, p90_h: float | None = None) -> Option:
    return Option(provider, cost, Timing(p50_h * HOUR, (p90_h or p50_h) * HOUR, "test"))


def test_batch_when_it_fits_and_saves_enough() -> None:
    advice = advise("m", option("groq", 5.0, 1, 2), [option("together", 10.0, 3)], 24 * HOUR, 0.5, False)
    assert advice.recommendation == "batch" and advice.meets_deadline and not advice.small_job
    assert advice.savings_usd == pytest.approx(5.0)
    assert "saves $5.00" in advice.reason and "fits the 24.0h completion window" in advice.reason


def test_a_small_job_is_flagged_and_fanned_out() -> None:
    advice = advise("m", option("groq", 0.002, 1, 2), [option("together", 0.004, 0.05)], 24 * HOUR, 0.5, False)
    assert advice.recommendation == "fan-out" and advice.small_job
    assert "batching saves only $0.0020 (under $0.5000)" in advice.reason


def test_fan_out_when_the_batch_misses_the_deadline() -> None:
    advice = advise("m", option("groq", 5.0, 20, 30), [option("together", 10.0, 1)], 4 * HOUR, 0.5, True)
    assert advice.recommendation == "fan-out" and advice.meets_deadline
    assert "misses the 4.0h deadline" in advice.reason and "$5.00 more than batch" in advice.reason


def test_tiered_when_the_batch_usually_makes_it_and_fan_out_is_too_slow() -> None:
    advice = advise("m", option("groq", 5.0, 2, 6), [option("together", 10.0, 9)], 4 * HOUR, 0.5, True)
    assert advice.recommendation == "tiered" and advice.meets_deadline
    assert "p50 2.0h fits" in advice.reason and "fan out what is unfinished" in advice.reason


def test_nothing_meets_the_deadline_the_fastest_is_named() -> None:
    advice = advise("m", option("groq", 5.0, 20, 30), [option("together", 10.0, 9)], 1 * HOUR, 0.5, True)
    assert advice.recommendation == "fan-out" and not advice.meets_deadline
    assert advice.reason.startswith("nothing meets the 60m deadline")


def test_batch_timing_observed_or_documented_times_waves() -> None:
    state = ProviderState("groq", turnaround_p50_s={"m": 600.0}, turnaround_p90_s={"m": 1800.0})
    seen = batch_timing(state, "m", 12, requests=1000, per_batch=100, in_flight=4)  # 10 shards, 3 waves
    assert (seen.p50_s, seen.p90_s) == (1800.0, 5400.0)
    assert seen.basis == "observed over 12 finished shard(s), 3 waves of 10 shards"
    unknown = batch_timing(None, "m", 0, requests=10, per_batch=100, in_flight=4)
    assert unknown.p90_s == 24 * HOUR and "documented 24h window" in unknown.basis


def test_fan_out_timing_takes_the_slower_limit() -> None:
    assert fanout_timing(600, 1_000_000, 600, None).p90_s == 60.0
    both = fanout_timing(600, 1_000_000, 600, 100_000)  # tokens: 10 minutes
    assert both.p90_s == 600.0 and both.basis == "100,000 tokens/min"
    assert "assumed 60 requests/min" in fanout_timing(60, 0, None, None).basis
