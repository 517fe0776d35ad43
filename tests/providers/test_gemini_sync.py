"""GeminiSyncAdapter against the Gemini emulator's ``:generateContent`` on loopback: translation both ways, the
tier asked and the tier that served, flex refusals and priority downgrades, errors and a refused key."""

from __future__ import annotations

import base64
import math
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest

from gateway.providers.base import ProviderAuthFailed, ProviderUnavailable, SyncRequest
from gateway.providers.config import ProviderConfig
from gateway.providers.gemini_sync import GeminiSyncAdapter
from gateway.providers.http import RetryPolicy
from gateway.simulator import ProviderSpec, SimulatorCluster, embedding_vector, text_tokens
from tests.conftest import loopback
from tests.providers.support import CHAT, FAST_RETRY, executed, sync_request

EMBEDDINGS = "/v1/embeddings"

MODEL = "gemini-2.5-flash"
SECRET = "gm-sync-secret-77a1c3"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="gem", kind="gemini", models=[MODEL], api_key=SECRET),
        ProviderSpec(name="oai", models=[MODEL]),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def make_adapter(cluster: SimulatorCluster, http: httpx.AsyncClient, api_key: str = SECRET) -> GeminiSyncAdapter:
    config = ProviderConfig(
        name="gem", kind="gemini_sync", base_url=cluster.base_url("gem"), models=[MODEL], timeout_s=5
    )
    return GeminiSyncAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY)


def request(custom_id: str, text: str = "hello", **fields: Any) -> SyncRequest:
    return sync_request(custom_id, MODEL, text, **fields)


def billed_as(tier: str, body: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The emulator's invoice by tier when one answer's tokens were billed at ``tier``."""
    return {tier: {"input": body["usage"]["prompt_tokens"], "output": body["usage"]["completion_tokens"]}}


def posts(cluster: SimulatorCluster) -> list[tuple[str, int]]:
    return [(entry.path, entry.status) for entry in cluster.state("gem").log if entry.method == "POST"]


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
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
    for key in ("prompt_tokens", "completion_tokens"):
        assert body["usage"][key] == direct["usage"][key]
    assert body["service_tier"] == "default"
    assert line["response"]["request_id"] and body["id"] == "chatcmpl-" + line["response"]["request_id"]
    assert posts(cluster) == [(f"/v1beta/models/{MODEL}:generateContent", 200)]
    assert cluster.state("gem").stats.usage_by_tier == billed_as("standard", body)


async def test_flex_is_asked_and_served_and_refused_flex_calls_are_retried_unbilled(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    cluster.set_faults("gem", flex_unavailable_next=2)
    line = await executed(make_adapter(cluster, http), request("f", service_tier="flex"))
    body = line["response"]["body"]
    assert line["response"]["status_code"] == 200 and body["service_tier"] == "flex"
    assert [status for _, status in posts(cluster)] == [429, 429, 200]
    stats = cluster.state("gem").stats
    assert stats.flex_refused == 2
    assert stats.usage_by_tier == billed_as("flex", body)


async def test_flex_refused_on_every_try_leaves_its_429_line_and_bills_nothing(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    cluster.set_faults("gem", flex_unavailable_rate=1.0)
    line = await executed(make_adapter(cluster, http), request("f", service_tier="flex"))
    assert line["response"]["status_code"] == 429
    assert line["response"]["body"]["error"]["code"] == "resource_exhausted"
    assert len(posts(cluster)) == FAST_RETRY.attempts
    assert cluster.state("gem").stats.usage_by_tier == {}


async def test_priority_downgraded_by_gemini_reads_as_standard(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    adapter = make_adapter(cluster, http)
    served = (await executed(adapter, request("p1", service_tier="priority")))["response"]["body"]["service_tier"]
    cluster.set_faults("gem", priority_downgrade_rate=1.0)
    downgraded = (await executed(adapter, request("p2", service_tier="priority")))["response"]["body"]["service_tier"]
    assert (served, downgraded) == ("priority", "default")
    assert set(cluster.state("gem").stats.usage_by_tier) == {"priority", "standard"}


async def test_a_request_that_cannot_be_translated_gets_a_400_line_and_is_never_sent(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    body = {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}
    item = SyncRequest("bad", CHAT, msgspec.json.encode(body), estimated_tokens=5)
    line = await executed(make_adapter(cluster, http), item)
    assert line["custom_id"] == "bad" and line["response"]["status_code"] == 400
    error = line["response"]["body"]["error"]
    assert "cannot be sent to a Gemini model" in error["message"] and error["param"] == "messages[0].role"
    assert posts(cluster) == []


async def test_gemini_errors_become_openai_error_lines(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    body = {"model": "gemini-none", "messages": [{"role": "user", "content": "hi"}]}
    line = await executed(make_adapter(cluster, http), SyncRequest("nf", CHAT, msgspec.json.encode(body)))
    assert line["response"]["status_code"] == 404
    assert line["response"]["body"]["error"]["code"] == "not_found"
    assert len(posts(cluster)) == 1, "a 404 is the request's own answer, not retried"


async def test_a_refused_key_raises_without_leaking_it(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderAuthFailed) as caught:
        await make_adapter(cluster, http, api_key="gm-wrong-key-1f0c").execute(request("k"))
    assert "gm-wrong-key-1f0c" not in str(caught.value) and SECRET not in str(caught.value)


async def test_health_and_endpoints(cluster: SimulatorCluster, http: httpx.AsyncClient) -> None:
    adapter = make_adapter(cluster, http)
    assert (await adapter.health()).healthy
    assert adapter.serves(CHAT) and adapter.serves(EMBEDDINGS) and not adapter.serves("/v1/responses")
    assert adapter.executes_locally


async def test_embeddings_are_answered_one_text_at_a_time_and_priced_at_the_estimate(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    adapter = make_adapter(cluster, http)

    def embedding(custom_id: str, **fields: Any) -> SyncRequest:
        body = {"model": MODEL, "input": "an accented résumé to embed", **fields}
        return SyncRequest(custom_id, EMBEDDINGS, msgspec.json.encode(body), estimated_tokens=8)

    plain = (await executed(adapter, embedding("e", dimensions=16)))["response"]
    assert plain["status_code"] == 200 and plain["body"]["object"] == "list"
    assert plain["body"]["data"][0]["embedding"] == embedding_vector("an accented résumé to embed", 16)
    # No token count in Gemini's synchronous answer: the text's UTF-8 bytes / 4, rounded up.
    assert plain["body"]["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert cluster.state("gem").stats.usage_by_tier["standard"]["input"] == text_tokens("an accented résumé to embed")
    packed = (await executed(adapter, embedding("b", dimensions=4, encoding_format="base64")))["response"]["body"]
    values = struct.unpack("<4f", base64.b64decode(packed["data"][0]["embedding"]))
    expected = embedding_vector("an accented résumé to embed", 4)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(values, expected, strict=True))
    two = (await executed(adapter, embedding("two", input=["one", "two"])))["response"]
    assert two["status_code"] == 400 and "one text per request" in two["body"]["error"]["message"]
    assert [path for path, _ in posts(cluster)] == [f"/v1beta/models/{MODEL}:embedContent"] * 2  # never sent: the third


# --- answers the emulator never gives, from a canned server on loopback ----------------------------------


class _Canned(BaseHTTPRequestHandler):
    """Answers every POST with the server's next canned (status, headers, body)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, headers, body = self.server.answers.pop(0)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in {"content-type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, list[tuple[int, dict[str, str], bytes]]]]:
    """A base URL and the list of answers its server gives, in order."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.answers = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.answers  # type: ignore[attr-defined]
    server.shutdown()


def generated(tier: str | None) -> bytes:
    usage: dict[str, Any] = {"promptTokenCount": 3, "candidatesTokenCount": 2}
    if tier is not None:
        usage["serviceTier"] = tier
    content = {"role": "model", "parts": [{"text": "ok"}]}
    return msgspec.json.encode({"candidates": [{"content": content, "finishReason": "STOP"}], "usageMetadata": usage})


async def test_the_served_tier_is_read_from_the_header_first_then_the_body(
    canned: tuple[str, list[tuple[int, dict[str, str], bytes]]], http: httpx.AsyncClient
) -> None:
    base_url, answers = canned
    answers += [
        (200, {"x-gemini-service-tier": "standard"}, generated("priority")),  # the header wins
        (200, {}, generated("SERVICE_TIER_PRIORITY")),  # only the body says
        (200, {"x-gemini-service-tier": "FLEX"}, generated(None)),  # only the header says
        (200, {}, generated(None)),  # neither: no tier named (a flex answer is then billed at standard)
    ]
    config = ProviderConfig(name="gem", kind="gemini_sync", base_url=base_url, models=[MODEL], timeout_s=5)
    adapter = GeminiSyncAdapter(config=config, http=http, api_key=SECRET, retry=FAST_RETRY)
    tiers = [
        (await executed(adapter, request(f"t{i}", service_tier="priority")))["response"]["body"].get("service_tier")
        for i in range(4)
    ]
    assert tiers == ["default", "priority", "flex", None]


async def test_an_error_line_keeps_the_http_status_and_never_shows_the_key(
    canned: tuple[str, list[tuple[int, dict[str, str], bytes]]], http: httpx.AsyncClient
) -> None:
    base_url, answers = canned
    leak = {"error": {"code": 200, "message": f"quota for key {SECRET} is used up", "status": "OK"}}
    answers.append((400, {}, msgspec.json.encode(leak)))
    config = ProviderConfig(name="gem", kind="gemini_sync", base_url=base_url, models=[MODEL], timeout_s=5)
    adapter = GeminiSyncAdapter(config=config, http=http, api_key=SECRET, retry=FAST_RETRY)
    raw = await adapter.execute(request("e"))
    line = msgspec.json.decode(raw)
    assert line["response"]["status_code"] == 400 and "quota for key" in line["response"]["body"]["error"]["message"]
    assert SECRET.encode() not in raw


async def test_a_service_tier_that_is_not_a_string_asks_for_the_standard_tier(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    line = await executed(make_adapter(cluster, http), request("odd", service_tier=["flex"]))
    assert line["response"]["status_code"] == 200 and line["response"]["body"]["service_tier"] == "default"


async def test_a_flex_request_waits_longer_than_the_provider_timeout(
    cluster: SimulatorCluster, http: httpx.AsyncClient
) -> None:
    """Flex answers can queue for minutes: a flex request outlives ``timeout_s``, a standard one does not."""
    config = ProviderConfig(
        name="gem", kind="gemini_sync", base_url=cluster.base_url("gem"), models=[MODEL], timeout_s=0.5
    )
    adapter = GeminiSyncAdapter(config=config, http=http, api_key=SECRET, retry=RetryPolicy(attempts=1))
    cluster.set_faults("gem", latency_s=1.0)
    flex = await executed(adapter, request("slow-flex", service_tier="flex"))
    assert flex["response"]["status_code"] == 200
    with pytest.raises(ProviderUnavailable):
        await adapter.execute(request("slow-standard"))
