"""The Gemini emulator's synchronous ``:generateContent`` over real loopback HTTP, in Google's shapes: the
deterministic answer, ``serviceTier`` in every spelling, the served tier in the body and the header, flex
refusals and priority downgrades."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster, embedding_vector, text_tokens
from tests.conftest import loopback

KEY = "gm-sync-emulator"
MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    with SimulatorCluster([ProviderSpec(name="gem", kind="gemini", models=[MODEL], api_key=KEY)]) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    cluster.reset("gem")


def generate(cluster: SimulatorCluster, model: str = MODEL, key: str = KEY, **fields: Any) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}], **fields}
    url = f"{cluster.base_url('gem')}/v1beta/models/{model}:generateContent"
    return loopback.post(url, json=body, headers={"x-goog-api-key": key})


def test_a_request_is_answered_at_once_with_its_usage(cluster: SimulatorCluster) -> None:
    answer = generate(cluster)
    assert answer.status_code == 200
    body = answer.json()
    assert body["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hello there"
    assert body["candidates"][0]["finishReason"] == "STOP" and body["modelVersion"] == MODEL
    usage = body["usageMetadata"]
    assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0
    assert usage["serviceTier"] == answer.headers["x-gemini-service-tier"] == "standard"


@pytest.mark.parametrize(
    ("spelling", "served"),
    [("flex", "flex"), ("FLEX", "flex"), ("SERVICE_TIER_FLEX", "flex"), ("priority", "priority"),
     ("SERVICE_TIER_PRIORITY", "priority"), ("standard", "standard"), ("unspecified", "standard")],
)  # fmt: skip
def test_every_spelling_of_service_tier_is_taken(cluster: SimulatorCluster, spelling: str, served: str) -> None:
    answer = generate(cluster, serviceTier=spelling)
    assert answer.status_code == 200
    assert answer.headers["x-gemini-service-tier"] == answer.json()["usageMetadata"]["serviceTier"] == served
    assert generate(cluster, service_tier=spelling).headers["x-gemini-service-tier"] == served


def test_flex_refusals_and_priority_downgrades(cluster: SimulatorCluster) -> None:
    cluster.set_faults("gem", flex_unavailable_next=1, priority_downgrade_rate=1.0, retry_after_s=3)
    refused = generate(cluster, serviceTier="flex")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and error["details"][0]["retryDelay"] == "3s"
    assert generate(cluster, serviceTier="flex").headers["x-gemini-service-tier"] == "flex"
    assert generate(cluster, serviceTier="priority").headers["x-gemini-service-tier"] == "standard"
    stats = cluster.state("gem").stats
    assert stats.flex_refused == 1 and set(stats.usage_by_tier) == {"flex", "standard"}


def test_bad_requests_get_google_errors(cluster: SimulatorCluster) -> None:
    invalid = generate(cluster, serviceTier="turbo")
    assert invalid.status_code == 400 and invalid.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert generate(cluster, model="gemini-none").json()["error"]["status"] == "NOT_FOUND"
    assert generate(cluster, key="wrong").status_code == 401
    empty = loopback.post(
        f"{cluster.base_url('gem')}/v1beta/models/{MODEL}:generateContent", json={}, headers={"x-goog-api-key": KEY}
    )
    assert empty.status_code == 400 and "contents" in empty.json()["error"]["message"]


def test_embed_content_answers_one_vector_without_a_token_count(cluster: SimulatorCluster) -> None:
    url = f"{cluster.base_url('gem')}/v1beta/models/{MODEL}:embedContent"
    body = {"content": {"parts": [{"text": "embed me"}]}, "outputDimensionality": 6}
    answer = loopback.post(url, json=body, headers={"x-goog-api-key": KEY})
    assert answer.status_code == 200 and answer.json() == {"embedding": {"values": embedding_vector("embed me", 6)}}
    assert cluster.state("gem").stats.usage_by_tier["standard"]["input"] == text_tokens("embed me")
    empty = loopback.post(url, json={"content": {"parts": []}}, headers={"x-goog-api-key": KEY})
    assert empty.status_code == 400 and "at least one text part" in empty.json()["error"]["message"]
