"""The default policy: lowest estimated cost among usable providers, and the cost function itself."""

from __future__ import annotations

import pytest

from router_policies.base import BudgetExceeded, Hints, estimate_cost
from router_policies.cheapest import CheapestPolicy
from tests.router_policies import NOW, job, offer, states

policy = CheapestPolicy()


def test_batch_rate_is_used_and_the_cheapest_wins() -> None:
    offers = [offer("a", batch=(0.5, 1.0)), offer("b", batch=(0.4, 1.0)), offer("c", batch=(0.6, 0.2))]
    ranked = policy.rank(job(), offers, states("a", "b", "c"))
    assert [c.offer.provider for c in ranked] == ["c", "b", "a"]
    assert ranked[0].estimated_cost_usd == pytest.approx(0.6 + 0.1)
    assert "lowest estimated cost" in ranked[0].reason
    assert all(c.share == 1.0 and c.start_at is None for c in ranked)


def test_sync_offer_pays_the_sync_rate() -> None:
    offers = [offer("a", mode="sync", sync=(0.3, 0.3)), offer("a", mode="batch", batch=(0.5, 1.0))]
    ranked = policy.rank(job(), offers, states("a"))
    assert [c.offer.mode for c in ranked] == ["sync", "batch"]
    assert ranked[0].estimated_cost_usd == pytest.approx(0.45)
    assert "sync rate" in ranked[0].reason


@pytest.mark.parametrize(
    "override",
    [{"healthy": False}, {"circuit": "open"}],
    ids=["unhealthy", "circuit-open"],
)
def test_unusable_provider_is_dropped(override: dict[str, object]) -> None:
    offers = [offer("a", batch=(0.1, 0.1)), offer("b")]
    ranked = policy.rank(job(), offers, states("b", a=override))
    assert [c.offer.provider for c in ranked] == ["b"]


def test_provider_without_state_is_dropped_and_half_open_is_kept() -> None:
    offers = [offer("ghost", batch=(0.0, 0.0)), offer("a", batch=(0.2, 0.2)), offer("b")]
    ranked = policy.rank(job(), offers, states("b", a={"circuit": "half_open"}))
    assert [c.offer.provider for c in ranked] == ["a", "b"]


def test_nothing_usable_gives_an_empty_list() -> None:
    assert policy.rank(job(), [offer("a")], states(a={"healthy": False})) == []


def test_ties_break_by_observed_p90_then_name() -> None:
    offers = [offer("c"), offer("b"), offer("a")]
    fast_b = states("a", "c", b={"turnaround_p90_s": {"b-m": 3600.0}})
    assert [c.offer.provider for c in policy.rank(job(), offers, fast_b)] == ["b", "a", "c"]


def test_max_cost_drops_expensive_offers() -> None:
    offers = [offer("a", batch=(0.5, 1.0)), offer("b", batch=(5.0, 5.0))]
    ranked = policy.rank(job(Hints(max_cost_usd=2.0)), offers, states("a", "b"))
    assert [c.offer.provider for c in ranked] == ["a"]


def test_everything_over_the_cap_is_a_client_error() -> None:
    with pytest.raises(BudgetExceeded, match=r"\$1\.0000, above max_cost_usd of \$0\.5000"):
        policy.rank(job(Hints(max_cost_usd=0.5)), [offer("a")], states("a"))
    with pytest.raises(BudgetExceeded, match="remaining budget"):
        policy.rank(job(remaining_budget_usd=0.25), [offer("a")], states("a"))


def test_estimate_cost_rates() -> None:
    o = offer("a", sync=(1.0, 2.0), batch=(0.5, 1.0))
    assert estimate_cost(o, 2_000_000, 1_000_000) == pytest.approx(2.0)
    assert estimate_cost(o, 2_000_000, 1_000_000, batch=False) == pytest.approx(4.0)
    no_discount = offer("a", batch=None)
    assert estimate_cost(no_discount, 1_000_000, 0, at=NOW, batch=True) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        estimate_cost(o, -1, 0)


def test_offer_rejects_bad_prices_and_modes() -> None:
    with pytest.raises(ValueError, match="finite"):
        offer("a", sync=(float("nan"), 1.0))
    with pytest.raises(ValueError, match="mode"):
        offer("a", mode="stream")  # type: ignore[arg-type]
