"""The demo's sample batch and how its summary groups routing decisions."""

from __future__ import annotations

from typing import Any

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
    def decision(kind: str, to: str, count: int, reason: str = "", cause: str | None = None) -> dict[str, Any]:
        return {"kind": kind, "chosen_provider": to, "request_count": count, "reason": reason, "cause": cause}

    decisions = [
        decision("route", "groq-sim", 2000, reason="cheapest"),
        decision("retry", "groq-sim", 5, reason="cheapest", cause="5 request(s) failed at groq-sim"),
        decision("retry", "groq-sim", 7, reason="cheapest", cause="7 request(s) failed at groq-sim"),
        decision("failover", "together-sim", 200, cause="groq-sim unreachable: GET /batches/batch_1a2b failed"),
        decision("failover", "together-sim", 150, cause="groq-sim unreachable: GET /batches/batch_9f8e failed"),
    ]
    assert group_decisions(decisions) == {
        ("route", "groq-sim", "cheapest"): (1, 2000),
        ("retry", "groq-sim", "cause: some requests failed at groq-sim"): (2, 12),
        ("failover", "together-sim", "cause: groq-sim unreachable: GET /batches/… failed"): (2, 350),
    }
