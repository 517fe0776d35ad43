"""When a shard's unfinished requests may move, and what moved them."""

from __future__ import annotations

from gateway.db.models import Shard
from gateway.pipeline.failover import cause_of, may_move


def shard(**values: object) -> Shard:
    return Shard(batch_id="b", seq=0, provider="cheap", model="m", provider_model="m", input_key="k", **values)


def test_moves_stop_with_the_batch_after_the_last_try_and_after_a_failed_canary() -> None:
    assert may_move(False, shard(end_reason="completed", generation=0), 3)
    assert not may_move(True, shard(end_reason="completed", generation=0), 3)
    assert not may_move(False, shard(end_reason="completed", generation=2), 3)
    assert may_move(False, shard(end_reason="rerouted", generation=2), 3), "an unsent shard is not a try"
    assert not may_move(False, shard(end_reason="canary_failed"), 3)


def test_a_provider_failure_is_a_failover_and_request_errors_are_a_retry() -> None:
    kind, cause, provider_failed = cause_of(shard(end_reason="expired", last_error="queue full"), 4)
    assert (kind, provider_failed) == ("failover", True)
    assert cause == "cheap expired the provider batch before it finished: queue full"
    kind, cause, provider_failed = cause_of(shard(end_reason="completed"), 4)
    assert (kind, provider_failed) == ("retry", False) and cause.startswith("4 request(s) failed at cheap")
