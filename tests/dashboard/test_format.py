"""Formatting helpers of the dashboard."""

from __future__ import annotations

from dashboard import format as fmt


def test_money_shows_two_significant_digits_of_tiny_amounts() -> None:
    assert fmt.money(0.5) == "$0.5000"
    assert fmt.money(1.73e-5) == "$0.000017"
    assert fmt.money(1234.5, 2) == "$1,234.50"
    assert fmt.money(0) == "$0.0000"
    assert fmt.money(-0.006) == "-$0.0060"  # a placement that cost more than the synchronous baseline
    assert fmt.money(-1.73e-5) == "-$0.000017"
    assert fmt.money(None) == fmt.MISSING and fmt.money(True) == fmt.MISSING and fmt.money(float("nan")) == fmt.MISSING


def test_duration_and_time() -> None:
    assert fmt.duration(4.25) == "4.2s"
    assert fmt.duration(42) == "42s"
    assert fmt.duration(200) == "3m 20s"
    assert fmt.duration(7500) == "2h 05m"
    assert fmt.duration(None) == fmt.MISSING
    assert fmt.when(0) == "1970-01-01 00:00:00"
    assert fmt.when(None) == fmt.MISSING


def test_progress_counts_answered_requests() -> None:
    assert fmt.progress({"status": "in_progress", "request_counts": {"total": 8, "completed": 3, "failed": 1}}) == 0.5
    assert fmt.progress({"status": "completed", "request_counts": {"total": 0}}) == 1.0
    assert fmt.progress({"status": "validating", "request_counts": None}) == 0.0


def test_labels() -> None:
    assert fmt.status_label("in_progress") == "in progress"
    assert fmt.joined(["a", "b"]) == "a, b" and fmt.joined([]) == fmt.MISSING and fmt.joined("x") == "x"
    assert fmt.percent(0.805) == "80%"
