"""AnthropicSyncAdapter against the Anthropic emulator's ``/v1/messages`` on loopback: translation both ways,
``service_tier`` by placement (``standard_only`` / ``auto``) and the tier that served, a rate limit waited
out, errors and a refused key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from gateway.providers.anthropic_sync import AnthropicSyncAdapter
from gateway.providers.base import ProviderAuthFailed, SyncRequest
from gateway.providers.config import ProviderConfig
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import loopback
from tests.providers.support import CHAT, FAST_RETRY, executed, sync_request

MODEL = "claude-haiku-4-5"
SECRET = "sk-ant-sync-secret-4d20e9"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="claude", kind="anthropic", models=[MODEL], api_key=SECRET),
        ProviderSpec(name="oai", models=[MODEL]),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def make_adapter(cluster: SimulatorCluster, http: httpx.AsyncClient, api_key: str = SECRET) -> AnthropicSyncAdapter:
    config = ProviderConfig(
        name="claude", kind="anthropic_sync", base_url=cluster.base_url("claude"), models=[MODEL], timeout_s=5
    )
    return AnthropicSyncAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY)


def request(custom_id: str, text: str = "hello", **fields: Any) -> SyncRequest:
    return sync_request(custom_id, MODEL, text, **fields)


def posts(cluster: SimulatorCluster) -> list[int]:
    return [entry.status for entry in cluster.state("claude").log if entry.method == "POST"]


async def test_an_answer_reads_as_the_openai_emulator_answers_the_same_request(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    line = await executed(make_adapter(cluster, http), request("a", "the same question"))
    assert line["custom_id"] == "a" and line["error"] is None and line["response"]["status_code"] == 200
    body = line["response"]["body"]
    direct = loopback.post(
        cluster.base_url("oai") + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "the same question"}], "max_tokens": 16},
    ).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("msg_")
    assert body["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
    for key in ("prompt_tokens", "completion_tokens"):
        assert body["usage"][key] == direct["usage"][key]
    assert posts(cluster) == [200]


async def test_a_standard_placement_asks_standard_only_even_where_priority_capacity_exists(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    line = await executed(make_adapter(cluster, http), request("s"))
    assert line["response"]["body"]["service_tier"] == "default"
    assert set(cluster.state("claude").stats.usage_by_tier) == {"standard"}


async def test_a_priority_placement_asks_auto_and_reads_the_tier_that_served_it(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    adapter = make_adapter(cluster, http)
    served = (await executed(adapter, request("p1", service_tier="priority")))["response"]["body"]["service_tier"]
    cluster.set_faults("claude", priority_downgrade_rate=1.0)  # no Priority Tier capacity left
    downgraded = (await executed(adapter, request("p2", service_tier="priority")))["response"]["body"]["service_tier"]
    assert (served, downgraded) == ("priority", "default")
    assert set(cluster.state("claude").stats.usage_by_tier) == {"priority", "standard"}


async def test_rate_limits_are_retried_as_anthropic_asks(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    cluster.set_faults("claude", rate_limit_next=1, retry_after_s=1)
    line = await executed(make_adapter(cluster, http), request("r"))
    assert line["response"]["status_code"] == 200 and posts(cluster) == [429, 200]


async def test_a_request_that_cannot_be_translated_gets_a_400_line_and_is_never_sent(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    line = await executed(make_adapter(cluster, http), request("n2", n=2))
    assert line["custom_id"] == "n2" and line["response"]["status_code"] == 400
    assert "cannot be sent to an Anthropic model" in line["response"]["body"]["error"]["message"]
    assert posts(cluster) == []


async def test_anthropic_errors_become_openai_error_lines(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    body = {"model": "claude-none", "messages": [{"role": "user", "content": "hi"}]}
    line = await executed(make_adapter(cluster, http), SyncRequest("nf", CHAT, msgspec.json.encode(body)))
    assert line["response"]["status_code"] == 404
    error = line["response"]["body"]["error"]
    assert error["code"] == "not_found_error" and "claude-none" in error["message"]
    assert posts(cluster) == [404]


async def test_a_refused_key_raises_without_leaking_it(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderAuthFailed) as caught:
        await make_adapter(cluster, http, api_key="sk-ant-wrong-9e1b").execute(request("k"))
    assert "sk-ant-wrong-9e1b" not in str(caught.value) and SECRET not in str(caught.value)


async def test_health_and_endpoints(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    adapter = make_adapter(cluster, http)
    assert (await adapter.health()).healthy
    assert not (await make_adapter(cluster, http, api_key="sk-ant-wrong-9e1b").health()).healthy
    assert adapter.serves(CHAT) and not adapter.serves("/v1/embeddings")
