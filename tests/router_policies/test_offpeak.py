"""The offpeak policy and the price-window arithmetic it rests on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from router_policies.base import PriceWindow, estimate_cost
from router_policies.offpeak import OffpeakPolicy
from tests.router_policies import NOW, job, offer, states

policy = OffpeakPolicy()
OFF_PEAK = PriceWindow("16:30", "00:30", 0.5, 1.0, "off-peak")
DEEPSEEK = offer("deepseek", mode="sync", sync=(1.0, 2.0), batch=None, windows=(OFF_PEAK,))
FAST = {"deepseek": {"requests_per_minute": 1000.0}}


def at(hhmm: str, day: int = 24) -> datetime:
    hours, minutes = hhmm.split(":")
    return datetime(2026, 11, day, int(hours), int(minutes), tzinfo=UTC)


def test_window_wrapping_midnight() -> None:
    assert OFF_PEAK.contains(at("16:30")) and OFF_PEAK.contains(at("23:59")) and OFF_PEAK.contains(at("00:29"))
    assert not OFF_PEAK.contains(at("00:30")) and not OFF_PEAK.contains(at("12:00"))
    assert OFF_PEAK.next_start(at("12:00")) == at("16:30")
    assert OFF_PEAK.next_start(at("16:30")) == at("16:30")
    assert OFF_PEAK.next_start(at("17:00")) == at("16:30", day=25)


@pytest.mark.parametrize(("start", "end"), [("24:00", "01:00"), ("1:00", "02:00"), ("10:00", "10:00")])
def test_bad_windows_are_rejected(start: str, end: str) -> None:
    with pytest.raises(ValueError):
        PriceWindow(start, end, 1.0, 1.0)


def test_estimate_cost_honours_windows() -> None:
    assert estimate_cost(DEEPSEEK, 1_000_000, 0) == pytest.approx(1.0)  # no time: base rate
    assert estimate_cost(DEEPSEEK, 1_000_000, 0, at=at("12:00")) == pytest.approx(1.0)
    assert estimate_cost(DEEPSEEK, 1_000_000, 0, at=at("23:00")) == pytest.approx(0.5)
    # 16:00-17:00: half the hour at the base rate, half in the window.
    assert estimate_cost(DEEPSEEK, 1_000_000, 0, at=at("16:00"), duration_s=3600) == pytest.approx(0.75)
    # A whole day: 8 of 24 hours off-peak.
    assert estimate_cost(DEEPSEEK, 3_000_000, 0, at=at("12:00"), duration_s=86400) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="timezone-aware"):
        estimate_cost(DEEPSEEK, 1, 1, at=datetime(2026, 1, 1))


def test_holds_until_the_window_when_the_deadline_allows() -> None:
    ranked = policy.rank(job(), [DEEPSEEK], states(**FAST))
    held, now = ranked
    assert held.start_at == at("16:30")
    assert held.estimated_cost_usd == pytest.approx(1.0)
    assert now.start_at is None and now.estimated_cost_usd == pytest.approx(2.0)
    assert held.reason.startswith("held 4.5h until 16:30 UTC for the 'off-peak' window: $1.0000 instead of $2.0000")


def test_no_hold_when_the_deadline_is_too_close() -> None:
    ranked = policy.rank(job(deadline_s=3 * 3600), [DEEPSEEK], states(**FAST))
    assert [c.start_at for c in ranked] == [None]
    assert "no cheaper window reachable" in ranked[0].reason


def test_inside_the_window_starts_now_at_the_window_price() -> None:
    ranked = policy.rank(job(now=at("20:00")), [DEEPSEEK], states(**FAST))
    assert ranked[0].start_at is None
    assert ranked[0].estimated_cost_usd == pytest.approx(1.0)
    assert ranked[0].reason.endswith("inside the 'off-peak' window now")


def test_run_outlasting_the_window_pays_base_rate_for_the_rest() -> None:
    # 1,000 requests at 60 rpm take ~16.7 minutes; starting at 00:20 leaves 10 minutes off-peak.
    ranked = policy.rank(job(now=at("00:20")), [DEEPSEEK], states("deepseek"))
    now = next(c for c in ranked if c.start_at is None)
    run_s = 1000.0
    off = 600 / run_s
    assert now.estimated_cost_usd == pytest.approx(off * 1.0 + (1 - off) * 2.0)
    held = ranked[0]
    assert held.start_at == at("16:30") and held.estimated_cost_usd == pytest.approx(1.0)


def test_a_cheaper_batch_offer_still_wins_over_a_hold() -> None:
    batch = offer("openai", batch=(0.2, 0.2))
    ranked = policy.rank(job(), [DEEPSEEK, batch], states("openai", **FAST))
    assert ranked[0].offer is batch and ranked[0].start_at is None
    assert ranked[1].start_at == NOW + timedelta(hours=4, minutes=30)


def test_offers_that_cannot_finish_come_last() -> None:
    slow = offer("slow", batch=(0.01, 0.01))
    late = states(**FAST, slow={"turnaround_p90_s": {"slow-m": 48 * 3600.0}})
    ranked = policy.rank(job(), [slow, DEEPSEEK], late)
    assert ranked[-1].offer is slow
    assert ranked[-1].reason.startswith("misses the time limit 24.0h")
