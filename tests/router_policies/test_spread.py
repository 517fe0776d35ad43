"""The spread policy: split by weights, or across providers when the cheapest one's slots are full."""

from __future__ import annotations

import math

import pytest

from router_policies.base import BudgetExceeded, Hints, PolicyError
from router_policies.spread import SpreadPolicy
from tests.router_policies import job, offer, states

policy = SpreadPolicy()
OFFERS = [
    offer("groq", batch=(0.2, 0.2)),
    offer("groq", mode="sync", sync=(0.9, 0.9)),
    offer("together", batch=(0.4, 0.4)),
    offer("openai", batch=(1.0, 1.0)),
]
ALL = states("groq", "together", "openai")


def _shares(ranked: list) -> dict[str, float]:
    return {c.offer.provider: c.share for c in ranked}


def test_weights_split_the_job_on_each_providers_cheapest_offer() -> None:
    ranked = policy.rank(job(Hints(weights={"groq": 2, "together": 1})), OFFERS, ALL)
    assert _shares(ranked) == pytest.approx({"groq": 2 / 3, "together": 1 / 3})
    assert math.fsum(c.share for c in ranked) == 1.0
    assert [c.offer.mode for c in ranked] == ["batch", "batch"]
    assert ranked[0].estimated_cost_usd == pytest.approx(0.3 * 2 / 3)
    assert ranked[0].reason.startswith("weight 2; ")


def test_weight_of_an_unusable_provider_is_redistributed() -> None:
    weights = Hints(weights={"groq": 1, "together": 1, "openai": 2})
    ranked = policy.rank(job(weights), OFFERS, states("groq", "together", openai={"healthy": False}))
    assert _shares(ranked) == pytest.approx({"groq": 0.5, "together": 0.5})
    assert "unusable: openai" in ranked[0].reason


def test_a_single_usable_weighted_provider_takes_everything() -> None:
    weights = Hints(weights={"groq": 1, "together": 1})
    ranked = policy.rank(job(weights), OFFERS, states("groq", "openai", together={"circuit": "open"}))
    assert [(c.offer.provider, c.share) for c in ranked] == [("groq", 1.0)]
    assert ranked[0].reason.startswith("the other weighted providers are unusable: together; ")
    ranked = policy.rank(job(Hints(weights={"together": 3})), OFFERS, ALL)
    assert [(c.offer.provider, c.share) for c in ranked] == [("together", 1.0)]
    assert ranked[0].reason.startswith("single weight; ")


def test_no_usable_weighted_provider_falls_back_to_capacity() -> None:
    ranked = policy.rank(job(Hints(weights={"together": 1})), OFFERS, states("groq", "openai"))
    assert ranked[0].offer.provider == "groq"
    assert ranked[0].reason.startswith("no weighted provider usable; ")


def test_bad_weights_are_client_errors() -> None:
    with pytest.raises(PolicyError, match="unknown provider"):
        policy.rank(job(Hints(weights={"grok": 1})), OFFERS, ALL)
    with pytest.raises(PolicyError, match="above 0"):
        policy.rank(job(Hints(weights={"groq": 0})), OFFERS, ALL)


def test_full_cheapest_provider_spills_to_the_next_ones() -> None:
    capped = states(
        "openai",
        groq={"max_in_flight": 3, "in_flight": 2, "max_requests_per_batch": 300},
        together={"max_in_flight": 1, "in_flight": 0, "max_requests_per_batch": 500},
    )
    ranked = policy.rank(job(), OFFERS, capped)
    assert _shares(ranked) == pytest.approx({"together": 0.5, "groq": 0.3, "openai": 0.2})
    assert math.fsum(c.share for c in ranked) == 1.0
    assert all(c.share < 1.0 for c in ranked)


def test_what_nobody_can_start_queues_at_the_cheapest() -> None:
    capped = states(
        groq={"max_in_flight": 1, "max_requests_per_batch": 400},
        together={"max_in_flight": 1, "in_flight": 1},
        openai={"max_in_flight": 1, "max_requests_per_batch": 100},
    )
    ranked = policy.rank(job(), OFFERS, capped)
    assert _shares(ranked) == pytest.approx({"groq": 0.9, "openai": 0.1})
    assert "plus the queued rest" in ranked[0].reason


def test_no_split_needed_gives_the_cost_ranking() -> None:
    ranked = policy.rank(job(), OFFERS, ALL)
    assert [c.offer.provider for c in ranked] == ["groq", "together", "groq", "openai"]
    assert all(c.share == 1.0 for c in ranked)
    assert "whole job fits" in ranked[0].reason
    full = states("openai", groq={"max_in_flight": 1, "in_flight": 1}, together={"max_in_flight": 0})
    ranked = policy.rank(job(), OFFERS, full)
    assert [c.offer.provider for c in ranked] == ["openai", "groq", "together", "groq"]
    assert all(c.share == 1.0 for c in ranked)
    assert ranked[0].reason.startswith("cheaper providers' slots are full")


def test_all_providers_full_queues_on_the_cheapest() -> None:
    full = {name: {"max_in_flight": 1, "in_flight": 1} for name in ("groq", "together", "openai")}
    ranked = policy.rank(job(), OFFERS, states(**full))
    assert ranked[0].offer.provider == "groq"
    assert "no free slots anywhere; queues" in ranked[0].reason


def test_split_over_the_cost_cap_is_refused() -> None:
    with pytest.raises(BudgetExceeded, match="splitting 'm' across groq, together"):
        policy.rank(job(Hints(weights={"groq": 1, "together": 1}, max_cost_usd=0.4)), OFFERS, ALL)
