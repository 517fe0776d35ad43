"""When the next provider poll comes: the backoff, or sooner when the provider's progress says it ends sooner."""

from __future__ import annotations

import pytest

from gateway.pipeline.poll import next_poll_in

NOW = 1_000.0


@pytest.mark.parametrize(
    ("backoff", "before", "since", "done", "total", "expected", "why"),
    [
        (8.0, 0, NOW - 10, 0, 100, 8.0, "no progress: the backoff"),
        (8.0, 10, NOW - 1, 10, 100, 8.0, "no new progress since the last poll: the backoff"),
        (30.0, 0, NOW - 10, 50, 100, 11.0, "half done in 10 s: the rest in 10 s, polled a tenth later"),
        (4.0, 0, NOW - 10, 50, 100, 4.0, "the backoff comes sooner than the expected end"),
        (30.0, 40, NOW - 2, 60, 100, 4.4, "the rate since the last progress: 20 in 2 s, 40 to go"),
        (30.0, 0, NOW - 10, 99, 100, 0.25, "an expected end closer than the shortest poll delay"),
        (30.0, 50, NOW - 1, 100, 100, 0.25, "every request just done: the provider is writing its output"),
        (30.0, 100, NOW - 0.1, 100, 100, 0.25, "still writing, briefly: the shortest delay"),
        (30.0, 100, NOW - 3, 100, 100, 3.0, "writing for 3 s: the delay doubles with it"),
        (2.0, 100, NOW - 60, 100, 100, 2.0, "writing for long: never past the backoff"),
        (30.0, 0, None, 50, 100, 30.0, "no time to measure a rate from"),
        (30.0, 0, NOW, 50, 100, 30.0, "no time passed"),
    ],
)
def test_next_poll(
    backoff: float, before: int, since: float | None, done: int, total: int, expected: float, why: str
) -> None:
    assert next_poll_in(backoff, 0.25, before, since, done, total, NOW) == pytest.approx(expected), why


@pytest.mark.parametrize(
    ("backoff", "running_s", "expected", "why"),
    [
        (16.0, 40.0, 4.0, "running for 40 s: polled within 4 s however far the backoff grew"),
        (16.0, 1.0, 0.25, "just submitted: never sooner than the shortest delay"),
        (30.0, 3_600.0, 30.0, "running for an hour: the backoff"),
        (8.0, 200.0, 8.0, "a backoff shorter than a tenth of the run time"),
    ],
)
def test_a_batch_is_polled_at_least_every_tenth_of_its_run_time(
    backoff: float, running_s: float, expected: float, why: str
) -> None:
    delay = next_poll_in(backoff, 0.25, 0, NOW - running_s, 0, 100, NOW, running_s=running_s)
    assert delay == pytest.approx(expected), why
