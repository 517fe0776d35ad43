"""OpenAISyncAdapter against the OpenAI-protocol emulator's synchronous endpoints on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.providers.base import CapabilityNotSupported, ProviderUnavailable, ShardSubmission, SyncRequest
from gateway.providers.config import ProviderConfig, ProviderLimits
from gateway.providers.http import RetryPolicy
from gateway.providers.openai_sync import OpenAISyncAdapter
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.providers.support import CHAT

MODEL = "gpt-4o-mini"
FAST = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.05, retry_after_cap_s=5.0, wait_out_long_hints=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    with SimulatorCluster([ProviderSpec(name="sync", models=[MODEL])], control_port=None) as running:
        yield running


def make_adapter(http: httpx.AsyncClient, base_url: str, **limits: Any) -> OpenAISyncAdapter:
    config = ProviderConfig(
        name="sync", kind="openai_sync", base_url=base_url, models=[MODEL], timeout_s=5, limits=ProviderLimits(**limits)
    )
    return OpenAISyncAdapter(config=config, http=http, retry=FAST)


def request(custom_id: str, text: str = "hello") -> SyncRequest:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 16}
    return SyncRequest(custom_id, CHAT, msgspec.json.encode(body), estimated_tokens=20)


def status_of(line: bytes) -> int:
    return int(msgspec.json.decode(line)["response"]["status_code"])


def posts(cluster: SimulatorCluster) -> list[int]:
    return [entry.status for entry in cluster.state("sync").log if entry.method == "POST"]


async def test_execute_answers_one_output_line(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    line = msgspec.json.decode(await make_adapter(http, cluster.base_url("sync")).execute(request("a")))
    assert line["custom_id"] == "a" and line["error"] is None and line["response"]["status_code"] == 200
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "Echo: hello"
    assert line["response"]["request_id"]


async def test_429_is_waited_out_as_the_provider_asks(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    cluster.set_faults("sync", rate_limit_next=1, retry_after_s=1)
    adapter = make_adapter(http, cluster.base_url("sync"))
    started = time.monotonic()
    first = asyncio.create_task(adapter.execute(request("a")))
    await asyncio.sleep(0.2)  # the first request has its 429 by now
    second_started = time.monotonic()
    # The pause holds every request to this provider, not only the one that was refused.
    assert status_of(await adapter.execute(request("b"))) == 200
    assert time.monotonic() - second_started >= 0.6
    assert status_of(await first) == 200 and time.monotonic() - started >= 0.9
    assert posts(cluster) == [429, 200, 200]


async def test_a_flex_capacity_refusal_is_retried_without_holding_the_providers_other_requests(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    cluster.set_faults("sync", flex_unavailable_next=2)
    adapter = make_adapter(http, cluster.base_url("sync"))
    flex_body = {**msgspec.json.decode(request("f").body), "service_tier": "flex"}
    flex = SyncRequest("f", CHAT, msgspec.json.encode(flex_body), estimated_tokens=20)
    started = time.monotonic()
    answered = msgspec.json.decode(await adapter.execute(flex))
    # Retried at the policy's backoff: a rate limit's pause (seconds, for every request to the provider) is
    # not taken, so the provider's other traffic goes on meanwhile.
    assert time.monotonic() - started < 2.0 and adapter.limiter.paused_for() == 0
    assert answered["response"]["status_code"] == 200 and answered["response"]["body"]["service_tier"] == "flex"
    assert posts(cluster) == [429, 429, 200]  # refused twice for capacity (unbilled), then served


async def test_a_request_failing_every_try_gets_its_error_line(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    cluster.set_faults("sync", error_5xx_rate=1.0)
    line = msgspec.json.decode(await make_adapter(http, cluster.base_url("sync")).execute(request("a")))
    assert line["response"]["status_code"] == 500 and line["response"]["body"]["error"]["type"] == "server_error"
    assert posts(cluster) == [500] * FAST.attempts


async def test_a_refused_request_is_not_retried(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    body = msgspec.json.encode({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    line = await make_adapter(http, cluster.base_url("sync")).execute(SyncRequest("a", CHAT, body))
    assert 400 <= status_of(line) < 500 and len(posts(cluster)) == 1


async def test_unreachable_raises_after_the_tries(http: httpx.AsyncClient) -> None:
    adapter = make_adapter(http, "http://127.0.0.1:9/v1")  # discard port: nothing listens
    with pytest.raises(ProviderUnavailable, match=f"unreachable after {FAST.attempts} tries"):
        await adapter.execute(request("a"))


async def test_requests_per_minute_are_spread(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    adapter = make_adapter(http, cluster.base_url("sync"), requests_per_minute=120)  # one each 0.5 s
    started = time.monotonic()
    for index in range(4):
        await adapter.execute(request(f"r{index}"))
    assert time.monotonic() - started >= 1.0


async def test_only_execute_and_health(cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path) -> None:
    adapter = make_adapter(http, cluster.base_url("sync"))
    assert adapter.executes_locally
    shard = ShardSubmission("s", "t", CHAT, MODEL, tmp_path / "in.jsonl", 1)
    for call in (
        adapter.submit(shard), adapter.find_submitted("t"), adapter.poll("b"),
        adapter.fetch_results("b", tmp_path / "out"), adapter.cancel("b"),
    ):  # fmt: skip
        with pytest.raises(CapabilityNotSupported, match="provider sync \\(openai_sync\\) has no batch API"):
            await call
    assert (await adapter.health()).healthy
    cluster.set_faults("sync", down="503")
    report = await adapter.health()
    assert not report.healthy and "503" in report.detail
