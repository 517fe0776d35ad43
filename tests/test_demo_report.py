"""The demo's sample batch and how its summary groups routing decisions."""

from __future__ import annotations

from gateway.demo_report import group_decisions, sample_requests


def test_the_sample_batch_is_deterministic_distinct_and_capped() -> None:
    first, again = sample_requests(2000, "llama-3.3-70b"), sample_requests(2000, "llama-3.3-70b")
    assert first == again
    assert len({r["custom_id"] for r in first}) == 2000
    assert all(r["url"] == "/v1/chat/completions" and r["body"]["model"] == "llama-3.3-70b" for r in first)
    assert all(r["body"]["max_tokens"] > 0 for r in first)
    reviews = [r["body"]["messages"][-1]["content"] for r in first]
    assert len(set(reviews)) > 500, "the reviews barely vary"


def test_alike_decisions_are_grouped_with_ids_and_counts_blanked() -> None:
    decisions = [
        {"kind": "route", "chosen_provider": "groq-sim", "reason": "cheapest", "cause": None, "request_count": 2000},
        {"kind": "retry", "chosen_provider": "groq-sim", "cause": "5 request(s) failed at groq-sim", "request_count": 5},
        {"kind": "retry", "chosen_provider": "groq-sim", "cause": "7 request(s) failed at groq-sim", "request_count": 7},
        {"kind": "failover", "chosen_provider": "together-sim", "request_count": 200,
         "cause": "groq-sim unreachable: GET /batches/batch_1a2b failed"},
        {"kind": "failover", "chosen_provider": "together-sim", "request_count": 150,
         "cause": "groq-sim unreachable: GET /batches/batch_9f8e failed"},
    ]  # fmt: skip
    assert group_decisions(decisions) == {
        ("route", "groq-sim", "cheapest"): (1, 2000),
        ("retry", "groq-sim", "cause: some requests failed at groq-sim"): (2, 12),
        ("failover", "together-sim", "cause: groq-sim unreachable: GET /batches/… failed"): (2, 350),
    }
