"""What a team's past requests actually used, kept compactly: the basis of learned estimates.

For each team, logical model and endpoint the gateway keeps one row (:class:`~gateway.db.models.OutputTokenStats`):
the number of answered requests, exact sums of their input and output tokens, the sum of the same requests'
body-size estimate (bytes / 4, to learn how far it is off), and a histogram of output tokens per request.
The histogram has log-spaced buckets :data:`GROWTH` apart (each spans ~10 %), so a row stays a few hundred
bytes whatever the volume, and quantiles (p50, p90) are within one bucket of the truth. The exact sums give
exact means, which is what a total estimate needs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

GROWTH = 1.1
"""Ratio between the bounds of consecutive histogram buckets."""
ZERO_BUCKET = -1
"""Bucket of requests that wrote no output tokens."""
MIN_HISTORY = 20
"""Answered requests a history needs before estimates use it."""
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(tokens: int) -> int:
    """The histogram bucket of a request that wrote ``tokens`` output tokens."""
    if tokens <= 0:
        return ZERO_BUCKET
    return math.floor(math.log(tokens) / _LOG_GROWTH + 1e-9)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """``[low, high)`` tokens of a bucket."""
    if bucket == ZERO_BUCKET:
        return 0.0, 1.0
    return GROWTH**bucket, GROWTH ** (bucket + 1)


def bucket_mid(bucket: int) -> float:
    """A representative value of a bucket (its geometric middle; 0 for the zero bucket)."""
    if bucket == ZERO_BUCKET:
        return 0.0
    low, high = bucket_bounds(bucket)
    return math.sqrt(low * high)


@dataclass
class Sample:
    """Tokens of answered requests, gathered while a shard is collected (added to the history with its ledger row)."""

    requests: int = 0
    output_tokens: int = 0
    input_tokens: int = 0
    estimated_input_tokens: int = 0
    histogram: dict[int, int] = field(default_factory=dict)

    def add(self, output_tokens: int, input_tokens: int, estimated_input_tokens: int) -> None:
        """Count one answered request."""
        self.requests += 1
        self.output_tokens += max(0, output_tokens)
        self.input_tokens += max(0, input_tokens)
        self.estimated_input_tokens += max(0, estimated_input_tokens)
        bucket = bucket_of(output_tokens)
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1

    def add_all(self, output_tokens: list[int], input_tokens: list[int], estimated_input_tokens: list[int]) -> None:
        """Count many answered requests at once, as :meth:`add` counts each (the lists are aligned)."""
        self.requests += len(output_tokens)
        self.output_tokens += sum([tokens for tokens in output_tokens if tokens > 0])
        self.input_tokens += sum([tokens for tokens in input_tokens if tokens > 0])
        self.estimated_input_tokens += sum([tokens for tokens in estimated_input_tokens if tokens > 0])
        histogram = self.histogram
        # A shard's answers share few output lengths: each distinct one is bucketed once.
        for tokens, count in Counter(output_tokens).items():
            bucket = bucket_of(tokens)
            histogram[bucket] = histogram.get(bucket, 0) + count


@dataclass(frozen=True)
class History:
    """A team's record for one model and endpoint, as estimates use it."""

    requests: int
    output_tokens: int
    input_tokens: int
    estimated_input_tokens: int
    buckets: tuple[tuple[int, int], ...]
    """(bucket, count) in bucket order."""

    @classmethod
    def of(
        cls,
        *,
        requests: int,
        output_tokens: int,
        input_tokens: int,
        estimated_input_tokens: int,
        histogram: Mapping[str, int] | Mapping[int, int],
    ) -> History:
        """From the stored row's figures."""
        buckets = tuple(sorted((int(k), int(v)) for k, v in histogram.items() if int(v) > 0))
        return cls(requests, output_tokens, input_tokens, estimated_input_tokens, buckets)

    @property
    def usable(self) -> bool:
        """Enough answered requests to estimate from."""
        return self.requests >= MIN_HISTORY and sum(count for _, count in self.buckets) > 0

    @property
    def mean_output(self) -> float:
        """Output tokens per answered request (exact)."""
        return self.output_tokens / self.requests if self.requests else 0.0

    @property
    def input_scale(self) -> float:
        """Reported input tokens per token of the bytes / 4 rule (1.0 until something is known)."""
        if self.estimated_input_tokens <= 0 or self.input_tokens <= 0:
            return 1.0
        return self.input_tokens / self.estimated_input_tokens

    def quantile(self, q: float) -> float:
        """Output tokens per request at quantile ``q`` (0..1), interpolated inside its bucket."""
        total = sum(count for _, count in self.buckets)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for bucket, count in self.buckets:
            if seen + count >= rank:
                low, high = bucket_bounds(bucket)
                if bucket == ZERO_BUCKET:
                    return 0.0
                inside = (rank - seen) / count
                return low * (high / low) ** inside
            seen += count
        return bucket_bounds(self.buckets[-1][0])[1]

    def expected_output(self, cap: int | None) -> float:
        """Expected output tokens of one request whose answer is cut at ``cap`` tokens (None: no cap).

        Each bucket's middle, scaled so that the buckets' mean is the exact mean, cut at ``cap``.
        """
        mean = self.mean_output
        total = sum(count for _, count in self.buckets)
        if cap is None or total == 0:
            return mean
        mids = sum(bucket_mid(b) * n for b, n in self.buckets) / total
        scale = mean / mids if mids > 0 else 1.0
        return sum(min(bucket_mid(b) * scale, float(cap)) * n for b, n in self.buckets) / total
