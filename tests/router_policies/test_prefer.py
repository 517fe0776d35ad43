"""The prefer policy: the client's provider order first, then the cheapest of the rest."""

from __future__ import annotations

import pytest

from router_policies.base import Hints, PolicyError
from router_policies.prefer import PreferPolicy
from tests.router_policies import job, offer, states

policy = PreferPolicy()
OFFERS = [
    offer("cheap", batch=(0.1, 0.1)),
    offer("mid", batch=(0.5, 0.5)),
    offer("dear", batch=(2.0, 2.0)),
    offer("dear", mode="sync", sync=(1.0, 1.0)),
]
ALL = states("cheap", "mid", "dear")


def test_hint_order_comes_first_then_cost() -> None:
    ranked = policy.rank(job(Hints(providers=("dear", "mid"))), OFFERS, ALL)
    assert [(c.offer.provider, c.offer.mode) for c in ranked] == [
        ("dear", "sync"),
        ("dear", "batch"),
        ("mid", "batch"),
        ("cheap", "batch"),
    ]
    assert ranked[0].reason.startswith("preferred #1; ")
    assert ranked[2].reason.startswith("preferred #2; ")
    assert ranked[3].reason.startswith("not preferred; ")


def test_unusable_preferred_provider_is_skipped_and_said() -> None:
    ranked = policy.rank(job(Hints(providers=("dear", "mid"))), OFFERS, states("cheap", "mid", dear={"healthy": False}))
    assert [c.offer.provider for c in ranked] == ["mid", "cheap"]
    assert "skipped unusable preferred provider(s) dear" in ranked[0].reason


def test_preferred_provider_not_serving_the_model_is_said() -> None:
    ranked = policy.rank(job(Hints(providers=("other", "mid"))), OFFERS, states("cheap", "mid", "dear", "other"))
    assert ranked[0].offer.provider == "mid"
    assert "other do(es) not serve 'm'" in ranked[0].reason


def test_missing_hint_and_unknown_provider_are_client_errors() -> None:
    with pytest.raises(PolicyError, match="needs the 'providers' hint"):
        policy.rank(job(), OFFERS, ALL)
    with pytest.raises(PolicyError, match="unknown provider"):
        policy.rank(job(Hints(providers=("grok",))), OFFERS, ALL)
    with pytest.raises(PolicyError, match=r"known: cheap, dear, mid"):
        policy.rank(job(Hints(providers=("grok",))), OFFERS, ALL)


def test_cost_cap_still_applies() -> None:
    ranked = policy.rank(job(Hints(providers=("dear",), max_cost_usd=1.0)), OFFERS, ALL)
    assert [c.offer.provider for c in ranked] == ["cheap", "mid"]
