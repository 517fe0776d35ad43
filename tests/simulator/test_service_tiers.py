"""Service tiers on the emulator's synchronous chat endpoint, judged by the official SDK."""

from __future__ import annotations

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.simulator.openai_emulators import control, set_faults

MESSAGES = [{"role": "user", "content": "hello there"}]


def ask(client: openai.OpenAI, tier: str | None) -> str | None:
    extra = {} if tier is None else {"service_tier": tier}
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **extra)  # type: ignore[arg-type,call-overload]
    return answer.service_tier


def test_the_answer_names_the_tier_that_served_it(client: openai.OpenAI) -> None:
    assert [ask(client, tier) for tier in (None, "auto", "default", "flex", "priority", "fast", "scale")] == [
        "default", "default", "default", "flex", "priority", "priority", "default",
    ]  # fmt: skip
    for unknown in ("turbo", "ultrafast"):  # ultrafast is the Responses API's only
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, unknown)
        assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "service_tier"


def test_flex_short_of_capacity_is_an_unbilled_429_and_priority_can_be_downgraded(
    cluster: SimulatorCluster, client: openai.OpenAI
) -> None:
    set_faults(cluster, flex_unavailable_next=1, priority_downgrade_rate=1.0)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, "flex")
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "resource_unavailable"
    assert "not charged" in refused.value.message
    assert ask(client, "priority") == "default"
    assert ask(client, "flex") == "flex"  # only the next one was refused
    set_faults(cluster, flex_unavailable_rate=1.0)
    with pytest.raises(openai.RateLimitError):
        ask(client, "flex")
    stats = control(cluster, "GET", "/providers/main/stats").json()
    invoice = control(cluster, "GET", "/providers/main/invoice").json()
    assert stats["flex_refused"] == 2
    assert set(invoice["sync_by_tier"]) == {"default", "flex"}  # the refused flex call is billed nowhere
    assert invoice["sync_by_tier"]["flex"]["input"] > 0 and invoice["sync_by_tier"]["flex"]["output"] > 0
