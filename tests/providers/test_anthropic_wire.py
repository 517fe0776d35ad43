"""Pure transforms of Anthropic's Message Batches wire format: batch states and counts, error bodies."""

from __future__ import annotations

import msgspec
import pytest

from gateway.providers.anthropic_wire import error_detail, parse_batch
from gateway.providers.base import ProviderBatchState

COUNTS = {"processing": 0, "succeeded": 3, "errored": 1, "canceled": 0, "expired": 0}


@pytest.mark.parametrize(
    ("batch", "state"),
    [
        ({"processing_status": "in_progress"}, ProviderBatchState.RUNNING),
        ({"processing_status": "canceling"}, ProviderBatchState.CANCELLING),
        ({"processing_status": "ended", "request_counts": COUNTS}, ProviderBatchState.COMPLETED),
        ({"processing_status": "ended", "cancel_initiated_at": "2026-01-01T00:00:00Z"}, ProviderBatchState.CANCELLED),
        ({"processing_status": "ended", "request_counts": {**COUNTS, "expired": 2}}, ProviderBatchState.EXPIRED),
    ],
)
def test_parse_batch_states(batch: dict[str, object], state: ProviderBatchState) -> None:
    result = parse_batch(batch)
    assert result is not None and result.state is state and result.raw_status == batch["processing_status"]


def test_parse_batch_counts_and_unknown_status() -> None:
    counts = {"processing": 2, "succeeded": 3, "errored": 1, "canceled": 4, "expired": 5}
    result = parse_batch({"processing_status": "in_progress", "request_counts": counts})
    assert result is not None and (result.total, result.completed, result.failed) == (15, 3, 10)
    assert parse_batch({"processing_status": "archived"}) is None and parse_batch({}) is None


def test_error_detail_names_the_error_type() -> None:
    body = {"type": "error", "error": {"type": "permission_error", "message": "no access"}, "request_id": "req_1"}
    assert error_detail(msgspec.json.encode(body)) == "permission_error: no access"
    assert error_detail(b"upstream went away") == "upstream went away"
