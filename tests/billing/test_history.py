"""The compact history of output tokens: log-spaced buckets, quantiles within a bucket, exact capped means."""

from __future__ import annotations

import random
import statistics

import pytest

from gateway.billing.history import GROWTH, MIN_HISTORY, History, Sample, bucket_bounds, bucket_of


def history_of(values: list[int], inputs: tuple[int, int] = (0, 0)) -> History:
    sample = Sample()
    for value in values:
        sample.add(value, 0, 0)
    return History.of(
        requests=sample.requests,
        output_tokens=sample.output_tokens,
        input_tokens=inputs[0],
        estimated_input_tokens=inputs[1],
        histogram={str(k): v for k, v in sample.histogram.items()},
    )


def test_every_value_falls_in_its_bucket() -> None:
    for value in [1, 2, 3, 9, 10, 11, 255, 256, 1000, 4096, 123_456]:
        low, high = bucket_bounds(bucket_of(value))
        assert low <= value < high * (1 + 1e-9), value
        assert high / low == pytest.approx(GROWTH)
    assert bucket_of(0) == bucket_of(-3) == -1


def test_quantiles_are_within_one_bucket_and_the_mean_is_exact() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(5, 0.8)) for _ in range(5000)]
    history = history_of(values)
    assert history.usable
    assert history.mean_output == pytest.approx(statistics.fmean(values))
    for q, exact in ((0.5, statistics.median(values)), (0.9, statistics.quantiles(values, n=10)[-1])):
        assert history.quantile(q) == pytest.approx(exact, rel=GROWTH - 1)


def test_a_cap_cuts_the_expected_output() -> None:
    history = history_of([100] * 50 + [1000] * 50)
    assert history.expected_output(None) == pytest.approx(550)
    assert history.expected_output(2000) == pytest.approx(550)  # above every answer: the exact mean
    assert history.expected_output(500) == pytest.approx(300, rel=0.06)  # half at 100, half cut to 500
    assert history.expected_output(50) == pytest.approx(50)


def test_too_little_history_is_not_used_and_input_scale_learns_the_bytes_rule() -> None:
    assert not history_of([10] * (MIN_HISTORY - 1)).usable
    assert history_of([10] * MIN_HISTORY).usable
    assert history_of([10] * MIN_HISTORY, inputs=(600, 1000)).input_scale == pytest.approx(0.6)
    assert history_of([10] * MIN_HISTORY).input_scale == 1.0
