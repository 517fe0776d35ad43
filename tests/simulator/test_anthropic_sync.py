"""The Anthropic emulator's synchronous ``/v1/messages`` over real loopback HTTP, judged by the official SDK
(strict): the deterministic answer, ``service_tier`` asked and served, and its errors."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster

KEY = "sk-ant-sync-emulator"
MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    with SimulatorCluster([ProviderSpec(name="main", kind="anthropic", models=[MODEL], api_key=KEY)]) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    cluster.reset("main")


@pytest.fixture(scope="module")
def client(cluster: SimulatorCluster) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=cluster.base_url("main"), api_key=KEY, max_retries=0, _strict_response_validation=True
    )


def test_a_message_is_answered_at_once_by_the_deterministic_model(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.id.startswith("msg_") and message.model == MODEL and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text == "Echo: hello there"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_the_usage_names_the_tier_that_served_it(cluster: SimulatorCluster, client: anthropic.Anthropic) -> None:
    def tier(**extra: str) -> str | None:
        message = client.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, **extra)  # type: ignore[arg-type]
        return message.usage.service_tier

    assert [tier(), tier(service_tier="auto"), tier(service_tier="standard_only")] == [
        "priority", "priority", "standard",
    ]  # fmt: skip
    cluster.set_faults("main", priority_downgrade_rate=1.0)  # an organisation without Priority Tier capacity
    assert tier(service_tier="auto") == "standard"
    billed = cluster.state("main").stats.usage_by_tier
    assert set(billed) == {"priority", "standard"} and all(v["input"] > 0 for v in billed.values())
    with pytest.raises(anthropic.BadRequestError) as refused:
        tier(service_tier="flex")
    assert "service_tier" in refused.value.message


def test_errors_are_anthropic_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-none", max_tokens=20, messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODEL, max_tokens=0, messages=MESSAGES)  # type: ignore[arg-type]
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "error"
    with pytest.raises(anthropic.AuthenticationError):
        client.with_options(api_key="sk-ant-wrong").messages.create(
            model=MODEL, max_tokens=20, messages=MESSAGES  # type: ignore[arg-type]
        )
