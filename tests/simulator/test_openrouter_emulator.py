"""The OpenRouter Batch API emulator over real loopback HTTP, in OpenRouter's own shapes."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import loopback

KEY = "openrouter-emulator-key-7d2e"
MODEL = "openai/gpt-4o-mini"
EMBED_MODEL = "openai/text-embedding-3-small"
PRICE = [2.0, 8.0]  # USD per million input / output tokens
CHAT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(
            name="openrouter", kind="openrouter", models=[MODEL, EMBED_MODEL], api_key=KEY,
            processing_delay_s=0.1, usd_per_mtok=PRICE,
        ),
        ProviderSpec(name="openrouter-small", kind="openrouter", models=[MODEL], max_file_bytes=4096),
    ]  # fmt: skip
    with SimulatorCluster(specs, control_port=0) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    for name in cluster.names():
        cluster.reset(name)


@pytest.fixture
def client(cluster: SimulatorCluster) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=cluster.base_url("openrouter"), headers=headers, timeout=10) as http:
        yield http


def chat(custom_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": text}], **fields}}


def batch_body(requests: list[dict[str, Any]], endpoint: str = CHAT, model: str = MODEL, **fields: Any) -> bytes:
    """A submit body with ``endpoint`` and ``model`` (and ``fields``) before ``requests``, as OpenRouter needs."""
    return json.dumps({"endpoint": endpoint, "model": model, **fields, "requests": requests}).encode()


def submit(client: httpx.Client, requests: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    answer = client.post("/batches", content=batch_body(requests, **fields))
    assert answer.status_code == 202, answer.text
    created: dict[str, Any] = answer.json()
    return created


def wait_for(client: httpx.Client, batch_id: str, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} never reached {statuses}")


def test_submit_answers_202_with_a_validating_batch(client: httpx.Client) -> None:
    answer = client.post("/batches", content=batch_body([chat("a", "hello"), chat("b", "there")]))
    assert answer.status_code == 202
    batch = answer.json()
    assert batch["id"].startswith("batch_") and batch["object"] == "batch" and batch["status"] == "validating"
    assert (batch["endpoint"], batch["model"], batch["completion_window"]) == (CHAT, MODEL, "24h")
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
    assert batch["results"] is None and batch["usage"] is None and batch["error"] is None
    assert batch["finalized_at"] is None and batch["expires_at"] == batch["created_at"] + 86_400


def test_requests_serialised_before_endpoint_model_or_callback_is_400(client: httpx.Client) -> None:
    requests = [chat("a", "hello")]
    for body in (
        {"requests": requests, "endpoint": CHAT, "model": MODEL},
        {"endpoint": CHAT, "requests": requests, "model": MODEL},
        {"endpoint": CHAT, "model": MODEL, "requests": requests, "callback_url": "https://example.com/hook"},
    ):
        answer = client.post("/batches", content=json.dumps(body).encode())
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == 400 and "before 'requests'" in answer.json()["error"]["message"]


def test_more_than_5000_requests_is_400_and_an_oversized_body_is_413(
    cluster: SimulatorCluster, client: httpx.Client
) -> None:
    many = client.post("/batches", content=batch_body([chat(f"r{i}", "x") for i in range(5001)]))
    assert many.status_code == 400 and "5000" in many.json()["error"]["message"]
    small = cluster.base_url("openrouter-small")
    large = loopback.post(f"{small}/batches", content=batch_body([chat("big", "x" * 5000)]))
    assert large.status_code == 413 and large.json()["error"]["code"] == 413


def test_unknown_model_is_400(client: httpx.Client) -> None:
    answer = client.post("/batches", content=batch_body([chat("a", "hello")], model="nobody/no-model"))
    assert answer.status_code == 400 and "nobody/no-model" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("requests", "fields"),
    [
        ([], {}),
        ([chat("a", "x")], {"endpoint": "/v1/completions"}),
        ([chat("a", "x")], {"completion_window": "48h"}),
        ([chat("a", "x"), chat("a", "y")], {}),
        ([chat("", "x")], {}),
        ([chat("a", "x")], {"callback_url": "http://example.com/hook"}),
        ([chat("a", "x")], {"provider": {"order": ["x"]}}),
    ],
)
def test_envelope_refusals_are_400(client: httpx.Client, requests: list[dict[str, Any]], fields: Any) -> None:
    assert client.post("/batches", content=batch_body(requests, **fields)).status_code == 400


def test_lifecycle_to_completed_with_inline_results_on_get_and_none_in_list(
    cluster: SimulatorCluster, client: httpx.Client
) -> None:
    cluster.set_faults("openrouter", stall=True, shuffle_output=False)
    created = submit(client, [chat("a", "hello"), chat("b", "there")])
    running = wait_for(client, created["id"], ("in_progress",))
    assert running["results"] is None and running["usage"] is None and running["provider"] == "openrouter"
    cluster.set_faults("openrouter", stall=False)
    done = wait_for(client, created["id"])
    assert done["status"] == "completed" and done["error"] is None
    assert done["finalized_at"] >= done["created_at"]
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert [item["custom_id"] for item in done["results"]] == ["a", "b"]
    for item in done["results"]:
        assert item["id"].startswith("batch_req_") and item["error"] is None
        assert item["response"]["status_code"] == 200 and item["response"]["request_id"]
        body = item["response"]["body"]
        assert body["id"].startswith("gen-batch-") and body["choices"][0]["message"]["content"].startswith("Echo: ")
    listed = client.get("/batches").json()
    assert [b["id"] for b in listed["data"]] == [created["id"]] and listed["has_more"] is False
    assert all("results" not in b for b in listed["data"])


def test_each_result_and_the_batch_cost_tokens_times_the_price(cluster: SimulatorCluster, client: httpx.Client) -> None:
    created = submit(client, [chat("a", "hello"), chat("b", "a somewhat longer question " * 5)])
    done = wait_for(client, created["id"])
    costs = []
    for item in done["results"]:
        usage = item["response"]["body"]["usage"]
        expected = (usage["prompt_tokens"] * PRICE[0] + usage["completion_tokens"] * PRICE[1]) / 1e6
        assert usage["cost"] == pytest.approx(expected) and usage["cost"] > 0
        costs.append(usage["cost"])
    usage = done["usage"]
    assert usage["cost"] == pytest.approx(sum(costs)) and usage["is_byok"] is False
    bodies = [item["response"]["body"]["usage"] for item in done["results"]]
    assert usage["prompt_tokens"] == sum(b["prompt_tokens"] for b in bodies)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    invoice = loopback.get(f"{cluster.control_url}/providers/openrouter/invoice").json()
    [billed] = invoice["batches"]
    assert billed["cost_usd"] == usage["cost"] and billed["input_tokens"] == usage["prompt_tokens"]
    assert billed["output_tokens"] == usage["completion_tokens"] and invoice["cost_usd"] == usage["cost"]


def test_a_failure_found_after_the_202_fails_the_batch_naming_the_offending_request(client: httpx.Client) -> None:
    mismatched = submit(client, [chat("ok", "x"), chat("odd", "y", model="other/model"), chat("odd2", "z", model="m")])
    failed = wait_for(client, mismatched["id"])
    assert failed["status"] == "failed" and failed["results"] == [] and failed["provider"] is None
    assert "Request 1" in failed["error"]["message"] and "'odd'" in failed["error"]["message"]
    not_object = submit(client, [chat("ok", "x"), {"custom_id": "bare", "body": "text"}])
    message = wait_for(client, not_object["id"])["error"]["message"]
    assert "Request 1" in message and "'bare'" in message


def test_fail_fraction_gives_error_items_that_cost_nothing(cluster: SimulatorCluster, client: httpx.Client) -> None:
    cluster.set_faults("openrouter", fail_fraction=1.0)
    done = wait_for(client, submit(client, [chat("a", "x"), chat("b", "y")])["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    for item in done["results"]:
        assert item["response"] is None and item["error"]["type"] == "server_error" and item["error"]["message"]
    assert done["usage"]["cost"] == 0 and done["usage"]["prompt_tokens"] == 0


def test_expire_fault_ends_the_batch_expired_with_error_items(cluster: SimulatorCluster, client: httpx.Client) -> None:
    cluster.set_faults("openrouter", expire=True, expire_after_fraction=0.5, shuffle_output=False)
    done = wait_for(client, submit(client, [chat(f"r{i}", "x") for i in range(4)])["id"])
    assert done["status"] == "expired" and done["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert [item["error"]["type"] if item["error"] else None for item in done["results"]][2:] == ["batch_expired"] * 2


def test_delete_is_409_before_terminal_and_drops_the_results_after(
    cluster: SimulatorCluster, client: httpx.Client
) -> None:
    cluster.set_faults("openrouter", stall=True)
    created = submit(client, [chat("a", "x")])
    early = client.delete(f"/batches/{created['id']}")
    assert early.status_code == 409 and early.json()["error"]["code"] == 409
    cluster.set_faults("openrouter", stall=False)
    assert wait_for(client, created["id"])["results"]
    deleted = client.delete(f"/batches/{created['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"id": created["id"], "object": "batch", "deleted": True}
    after = client.get(f"/batches/{created['id']}").json()
    assert after["status"] == "completed" and after["results"] is None
    assert client.delete("/batches/batch_missing").status_code == 404


def test_list_filters_pages_and_refuses_bad_parameters(cluster: SimulatorCluster, client: httpx.Client) -> None:
    first = wait_for(client, submit(client, [chat("a", "x")])["id"])
    cluster.set_faults("openrouter", stall=True)
    second = wait_for(client, submit(client, [chat("a", "x")])["id"], ("in_progress",))
    page = client.get("/batches", params={"limit": 1}).json()
    assert [b["id"] for b in page["data"]] == [second["id"]] and page["has_more"] is True
    rest = client.get("/batches", params={"limit": 1, "after": page["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [first["id"]] and rest["has_more"] is False
    running = client.get("/batches", params=[("status", "in_progress"), ("status", "failed")]).json()
    assert [b["id"] for b in running["data"]] == [second["id"]]
    for params in ({"limit": 0}, {"limit": 101}, {"status": "finalizing"}, {"created_after": "yesterday"}):
        assert client.get("/batches", params=params).status_code == 400


def test_the_api_beta_path_is_an_alias(cluster: SimulatorCluster) -> None:
    port = cluster.port_of("openrouter")
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/beta", headers=headers, timeout=10) as beta:
        created = submit(beta, [chat("a", "x")])
        assert wait_for(beta, created["id"])["status"] == "completed"
    with httpx.Client(base_url=cluster.base_url("openrouter"), headers=headers, timeout=10) as v1:
        assert v1.get(f"/batches/{created['id']}").json()["results"][0]["custom_id"] == "a"


def test_a_call_without_the_key_is_401(cluster: SimulatorCluster) -> None:
    base = cluster.base_url("openrouter")
    missing = loopback.get(f"{base}/batches")
    assert missing.status_code == 401 and missing.json() == {
        "error": {"code": 401, "message": "No auth credentials found"}
    }
    wrong = loopback.get(f"{base}/batches", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 401


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """A local HTTP server that keeps the JSON bodies POSTed to it."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            events.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", events
    server.shutdown()
    server.server_close()


def test_callback_url_receives_the_terminal_event(
    client: httpx.Client, receiver: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    url, events = receiver
    completed = submit(client, [chat("a", "x")], callback_url=url)
    event = events.get(timeout=10)
    assert event["type"] == "batch.completed" and event["data"]["id"] == completed["id"]
    assert event["data"]["status"] == "completed" and "results" not in event["data"]
    failed = submit(client, [chat("a", "x", model="other/model")], callback_url=url)
    event = events.get(timeout=10)
    assert event["type"] == "batch.failed" and event["data"]["id"] == failed["id"]


def test_embeddings_batches_run_and_cost_input_tokens_only(client: httpx.Client) -> None:
    requests = [{"custom_id": "e1", "body": {"input": ["alpha", "beta gamma"], "dimensions": 4}}]
    done = wait_for(client, submit(client, requests, endpoint="/v1/embeddings", model=EMBED_MODEL)["id"])
    assert done["status"] == "completed"
    body = done["results"][0]["response"]["body"]
    assert body["id"].startswith("gen-batch-") and [len(d["embedding"]) for d in body["data"]] == [4, 4]
    assert body["usage"]["cost"] == pytest.approx(body["usage"]["prompt_tokens"] * PRICE[0] / 1e6)
    assert done["usage"]["completion_tokens"] == 0


def test_messages_run_in_anthropic_shape_and_responses_fail_the_batch(client: httpx.Client) -> None:
    params = {"max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    done = wait_for(client, submit(client, [{"custom_id": "m", "body": params}], endpoint="/v1/messages")["id"])
    body = done["results"][0]["response"]["body"]
    assert body["type"] == "message" and body["id"].startswith("gen-batch-") and body["usage"]["cost"] > 0
    refused = submit(client, [{"custom_id": "r", "body": {"input": "hi"}}], endpoint="/v1/responses")
    failed = wait_for(client, refused["id"])
    assert failed["status"] == "failed" and "/v1/responses" in failed["error"]["message"]


def test_usd_per_mtok_is_two_non_negative_numbers_for_openrouter_only() -> None:
    assert ProviderSpec(name="o", kind="openrouter").usd_per_mtok == [0.075, 0.3]
    for bad in ([1.0], [1.0, 2.0, 3.0], [-1.0, 2.0]):
        with pytest.raises(ValueError, match="usd_per_mtok"):
            ProviderSpec(name="o", kind="openrouter", usd_per_mtok=bad)
    with pytest.raises(ValueError, match="needs kind 'openrouter'"):
        ProviderSpec(name="o", kind="openai", usd_per_mtok=[1.0, 2.0])
