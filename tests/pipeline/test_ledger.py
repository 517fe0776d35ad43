"""What a provider batch billed beyond the answers read from its results (the ledger's ``unread`` rows)."""

from __future__ import annotations

from gateway.pipeline.ledger import unread_usage
from gateway.pipeline.results import Usage
from gateway.providers.base import BatchUsage


def read(input_tokens: int, output_tokens: int, cached: int = 0) -> Usage:
    return Usage(input=input_tokens, output=output_tokens, cached=cached)


def test_nothing_beyond_when_the_provider_reports_no_total() -> None:
    assert unread_usage(None, read(100, 50)) is None


def test_nothing_beyond_when_the_answers_read_account_for_the_total() -> None:
    assert unread_usage(BatchUsage(input=100, output=50), read(100, 50)) is None


def test_the_rest_of_the_total_is_unread() -> None:
    beyond = unread_usage(BatchUsage(input=130, output=58, cached=20, reasoning=4), read(100, 50, cached=10))
    assert beyond == {"input": 30, "output": 8, "cached": 10, "reasoning": 4}


def test_unread_cached_tokens_never_exceed_the_unread_input() -> None:
    beyond = unread_usage(BatchUsage(input=105, output=60, cached=50), read(100, 50))
    assert beyond == {"input": 5, "output": 10, "cached": 5, "reasoning": 0}


def test_a_total_below_what_was_read_adds_nothing() -> None:
    # A provider whose total lags its lines (or is wrong) never takes away what the answers read showed.
    assert unread_usage(BatchUsage(input=90, output=40), read(100, 50)) is None
    assert unread_usage(BatchUsage(input=90, output=55), read(100, 50)) == {
        "input": 0, "output": 5, "cached": 0, "reasoning": 0,
    }  # fmt: skip
