"""The deadline policy: cheapest offer whose conservative turnaround fits, sync fan-out for short deadlines."""

from __future__ import annotations

import pytest

from router_policies.base import Hints, Offer
from router_policies.deadline import DeadlinePolicy
from tests.router_policies import job, offer, states

policy = DeadlinePolicy()
BATCH = offer("a", batch=(0.5, 1.0))
SYNC = offer("b", mode="sync", sync=(1.0, 2.0))


def test_short_deadline_without_observations_falls_back_to_sync_fan_out() -> None:
    ranked = policy.rank(job(deadline_s=2 * 3600), [BATCH, SYNC], states("a", "b"))
    assert [c.offer.mode for c in ranked] == ["sync", "batch"]
    first = ranked[0].reason
    assert first.startswith("sync fan-out tier: 17m (default 60 rpm) fits deadline 2.0h")
    assert "batch tier needs 24.0h (default, no observations), too slow for the deadline" in first
    assert "misses deadline 2.0h" in ranked[1].reason


def test_observed_p90_lets_the_cheaper_batch_tier_win() -> None:
    observed = states("b", a={"turnaround_p90_s": {"a-m": 3 * 3600.0}})
    ranked = policy.rank(job(deadline_s=6 * 3600), [SYNC, BATCH], observed)
    assert ranked[0].offer is BATCH
    assert ranked[0].reason.startswith("batch tier: 3.0h (observed p90) fits deadline 6.0h")
    assert ranked[0].estimated_cost_usd == pytest.approx(1.0)


def test_without_a_deadline_the_completion_window_is_the_limit() -> None:
    ranked = policy.rank(job(), [SYNC, BATCH], states("a", "b"))
    assert ranked[0].offer is BATCH
    assert "fits window 24.0h" in ranked[0].reason


def test_a_deadline_beyond_the_window_is_capped_by_it() -> None:
    late = states("b", a={"turnaround_p90_s": {"a-m": 30 * 3600.0}})
    ranked = policy.rank(job(deadline_s=48 * 3600), [BATCH, SYNC], late)
    assert ranked[0].offer is SYNC
    assert "misses window 24.0h" in ranked[1].reason


def test_nothing_fits_puts_the_fastest_first() -> None:
    slow = states("a", b={"requests_per_minute": 1.0})
    ranked = policy.rank(job(deadline_s=600), [SYNC, BATCH], slow)
    assert [c.offer.mode for c in ranked] == ["sync", "batch"]
    assert ranked[0].reason.startswith("no offer fits; fastest first.")


def test_rate_limits_and_queue_wait_shape_the_sync_estimate() -> None:
    tokens_bound = states("b", b={"requests_per_minute": 600.0, "tokens_per_minute": 100_000.0})
    ranked = policy.rank(job(deadline_s=20 * 60), [SYNC], tokens_bound)
    assert "15m (100000 tpm) fits" in ranked[0].reason
    waiting = states("b", b={"requests_per_minute": 600.0, "queue_wait_s": 3600.0})
    ranked = policy.rank(job(deadline_s=20 * 60), [SYNC], waiting)
    assert "misses deadline 20m" in ranked[0].reason


def test_unusable_providers_are_left_out_and_the_cap_applies() -> None:
    assert policy.rank(job(deadline_s=3600), [SYNC], states(b={"circuit": "open"})) == []
    ranked = policy.rank(job(Hints(max_cost_usd=1.5), deadline_s=2 * 3600), [BATCH, SYNC], states("a", "b"))
    assert [c.offer for c in ranked] == [BATCH]


FLEX = Offer(
    provider="b", model="m", provider_model="b-m", input_per_mtok=0.6, output_per_mtok=1.2, mode="sync", tier="flex"
)
PRIORITY = Offer(
    provider="b", model="m", provider_model="b-m", input_per_mtok=2.0, output_per_mtok=4.0, mode="sync", tier="priority"
)


def test_a_one_hour_deadline_takes_the_flex_tier_and_three_days_the_cheaper_batch_tier() -> None:
    offers = [BATCH, SYNC, FLEX, PRIORITY]
    hour = policy.rank(job(deadline_s=3600), offers, states("a", "b"))
    assert (hour[0].offer.service, hour[0].offer.label) == ("flex", "b/b-m (sync, flex)")
    assert hour[0].reason.startswith("flex tier: 32m (default 60 rpm + flex latency up to 15m) fits deadline 60m")
    assert [c.offer.service for c in hour[1:3]] == ["standard", "priority"]  # fitting, by cost
    observed = states("b", a={"turnaround_p90_s": {"a-m": 20 * 3600.0}})
    days = policy.rank(job(deadline_s=72 * 3600, completion_window_s=72 * 3600), offers, observed)
    assert days[0].offer is BATCH and days[0].reason.startswith("batch tier: 20.0h (observed p90) fits deadline 3.0d")


def test_a_tier_offer_is_synchronous() -> None:
    with pytest.raises(ValueError, match="its mode must be 'sync'"):
        Offer(provider="b", model="m", provider_model="b-m", input_per_mtok=1, output_per_mtok=1, tier="flex")
    with pytest.raises(ValueError, match="tier must be"):
        Offer(provider="b", model="m", provider_model="b-m", input_per_mtok=1, output_per_mtok=1, mode="sync", tier="x")  # type: ignore[arg-type]
