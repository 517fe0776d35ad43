"""Batch webhooks end to end: a gateway on the emulators posts each ended batch to the endpoints its team
registered, signed so that the official SDK's ``client.webhooks.unwrap`` accepts it (and rejects a tampered
body or another secret), retried with the same ``webhook-id`` until a 2xx, never followed through a redirect."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess, Receiver, loopback, simulated_provider_env, webhook_receiver
from tests.engine import chat_requests, reset, submit, wait_for, worker_process

ADMIN = {"Authorization": "Bearer test-admin-key"}
PROVIDERS = {
    "main": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
    "slowp": {"emulator": "slow", "models": {"slow-model": "gpt-4o-mini"}},
}


@pytest.fixture(scope="module")
def receiver(database_kind: str) -> Iterator[Receiver]:
    """A receiver per gateway (one per database), so that no post of one run is counted in the other."""
    with webhook_receiver() as started:
        yield started


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)
    env |= {"BATCHGW_EVENTS__POLL_INTERVAL_S": "0.2", "BATCHGW_EVENTS__BACKOFF_S": "0.3"}
    return gateway_factory(env).start()


@pytest.fixture(autouse=True)
def fresh_emulators(simulator: SimulatorCluster) -> None:
    reset(simulator, "fast", "slow")


def register(gateway: GatewayProcess, team: str, url: str, **fields: Any) -> dict[str, Any]:
    response = loopback.post(
        f"{gateway.base_url}/admin/webhook_endpoints", json={"team": team, "url": url, **fields}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def unwrap(secret: str, headers: dict[str, str], body: bytes) -> Any:
    return openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body, headers)


def test_each_ended_batch_is_posted_once_to_its_teams_endpoints_signed_as_openai_signs(
    gateway: GatewayProcess, receiver: Receiver
) -> None:
    every = register(gateway, "acme", receiver.url("/acme"), name="all of acme")
    failures = register(gateway, "acme", receiver.url("/acme-failures"), event_types=["batch.failed"])
    other = register(gateway, "globex", receiver.url("/globex"))
    assert every["signing_secret"].startswith("whsec_") and every["event_types"] == [
        "batch.completed", "batch.failed", "batch.expired", "batch.cancelled",
    ]  # fmt: skip
    client = gateway.client(gateway.create_key("acme"))

    completed = wait_for(client, submit(client, chat_requests(3, prefix="ok")).id)
    running = submit(client, chat_requests(4, model="slow-model", prefix="stop"))
    client.batches.cancel(running.id)
    cancelled = wait_for(client, running.id, timeout=60)
    bad = io.BytesIO(json.dumps(chat_requests(1)[0]).encode() + b"\n{not json\n")
    upload = client.files.create(file=("bad.jsonl", bad), purpose="batch")
    failed = wait_for(client, client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id)  # fmt: skip
    assert (completed.status, cancelled.status, failed.status) == ("completed", "cancelled", "failed")

    posts = receiver.wait_for("/acme", 3)
    events = {}
    for headers, body in posts:
        event = unwrap(every["signing_secret"], headers, body)
        events[event.data.id] = event
        assert headers["webhook-id"].startswith("wh_") and headers["content-type"] == "application/json"
        assert event.id.startswith("evt_") and json.loads(body)["object"] == "event"
    assert {batch_id: e.type for batch_id, e in events.items()} == {
        completed.id: "batch.completed", cancelled.id: "batch.cancelled", failed.id: "batch.failed",
    }  # fmt: skip
    assert events[completed.id].created_at == completed.completed_at
    assert events[failed.id].created_at == failed.failed_at

    [(headers, body)] = receiver.wait_for("/acme-failures", 1)
    assert unwrap(failures["signing_secret"], headers, body).data.id == failed.id
    time.sleep(1.0)  # a few more passes: nothing is posted twice, nothing to another team
    assert len(receiver.received("/acme")) == 3 and len(receiver.received("/acme-failures")) == 1
    assert receiver.received("/globex") == []

    headers, body = posts[0]
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(every["signing_secret"], headers, body.replace(b"batch_", b"batch-"))
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(other["signing_secret"], headers, body)

    detail = loopback.get(f"{gateway.base_url}/admin/webhook_endpoints/{every['id']}", headers=ADMIN).json()
    assert detail["deliveries"] == {"pending": 0, "delivered": 3, "gave_up": 0}
    assert {e["state"] for e in detail["recent_events"]} == {"delivered"}
    listed = loopback.get(f"{gateway.base_url}/admin/webhook_endpoints", params={"team": "acme"}, headers=ADMIN)
    assert {e["id"] for e in listed.json()["data"]} == {every["id"], failures["id"]}
    assert every["signing_secret"] not in listed.text and every["signing_secret"][-4:] in listed.text


def test_a_failing_endpoint_gets_retries_with_the_same_webhook_id_and_a_redirect_is_not_followed(
    gateway: GatewayProcess, receiver: Receiver
) -> None:
    receiver.answers["/flaky"] = [500, 503]
    receiver.answers["/moved"] = [302] * 50
    flaky = register(gateway, "initech", receiver.url("/flaky"))
    moved = register(gateway, "initech", receiver.url("/moved"))
    client = gateway.client(gateway.create_key("initech"))
    batch = wait_for(client, submit(client, chat_requests(2, prefix="retry")).id)

    attempts = receiver.wait_for("/flaky", 3)
    assert len({headers["webhook-id"] for headers, _ in attempts}) == 1, "a retry changed the webhook-id"
    stamps = [int(headers["webhook-timestamp"]) for headers, _ in attempts]
    assert stamps == sorted(stamps)
    for headers, body in attempts:  # every attempt is signed for its own timestamp
        assert unwrap(flaky["signing_secret"], headers, body).data.id == batch.id
    detail = loopback.get(f"{gateway.base_url}/admin/webhook_endpoints/{flaky['id']}", headers=ADMIN).json()
    [event] = detail["recent_events"]
    assert (event["state"], event["attempts"], event["last_status"]) == ("delivered", 3, 200)

    receiver.wait_for("/moved", 2)
    assert receiver.received("/elsewhere") == [], "a redirect was followed"
    detail = loopback.get(f"{gateway.base_url}/admin/webhook_endpoints/{moved['id']}", headers=ADMIN).json()
    [event] = detail["recent_events"]
    assert event["state"] == "pending" and event["last_status"] == 302 and event["attempts"] >= 2


def test_a_deleted_endpoint_gets_nothing_more(gateway: GatewayProcess, receiver: Receiver) -> None:
    gone = register(gateway, "umbrella", receiver.url("/gone"))
    deleted = loopback.delete(f"{gateway.base_url}/admin/webhook_endpoints/{gone['id']}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    client = gateway.client(gateway.create_key("umbrella"))
    wait_for(client, submit(client, chat_requests(1, prefix="late")).id)
    time.sleep(1.0)
    assert receiver.received("/gone") == []
    assert_error(loopback.get(f"{gateway.base_url}/admin/webhook_endpoints/{gone['id']}", headers=ADMIN), 404)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://[::1/hooks"}, "url"),
        ({"url": "https://example.com/x", "event_types": ["batch.done"]}, "event_types"),
        ({"url": "https://example.com/x", "event_types": []}, "event_types"),
        ({"url": "https://example.com/x", "team": ""}, "team"),
    ],
)
def test_a_bad_endpoint_is_a_400_naming_the_field(gateway: GatewayProcess, fields: dict[str, Any], param: str) -> None:
    body = {"team": "acme", **fields}
    response = loopback.post(f"{gateway.base_url}/admin/webhook_endpoints", json=body, headers=ADMIN)
    assert_error(response, 400, param=param)


# --- crashes ----------------------------------------------------------------------------------------------

CRASH_ENV = {
    "BATCHGW_EVENTS__TIMEOUT_S": "2",
    "BATCHGW_EVENTS__BACKOFF_S": "0.3",
    "BATCHGW_EVENTS__POLL_INTERVAL_S": "0.2",
}
"""An attempt stays claimed 2 s + 5 s: a crashed or frozen worker's event is posted again after 7 s."""


def event_detail(gateway: GatewayProcess, endpoint_id: str) -> dict[str, Any]:
    detail = loopback.get(f"{gateway.base_url}/admin/webhook_endpoints/{endpoint_id}", headers=ADMIN).json()
    [event] = detail["recent_events"]
    return dict(event)


def test_a_gateway_killed_mid_post_posts_the_event_again_with_the_same_webhook_id(
    gateway_factory: Any, simulator: SimulatorCluster, receiver: Receiver, tmp_path: Path
) -> None:
    env = simulated_provider_env(simulator, tmp_path, PROVIDERS) | CRASH_ENV
    gateway: GatewayProcess = gateway_factory(env).start()
    released = threading.Event()
    receiver.held["/killed"] = released
    endpoint = register(gateway, "wayne", receiver.url("/killed"))
    client = gateway.client(gateway.create_key("wayne"))
    batch = wait_for(client, submit(client, chat_requests(2, prefix="kill")).id)
    receiver.wait_for("/killed", 1)
    gateway.kill()  # SIGKILL while the receiver holds the answer: the attempt's outcome is never recorded
    released.set()
    gateway.start()

    posts = receiver.wait_for("/killed", 2, timeout=60)
    assert len({headers["webhook-id"] for headers, _ in posts}) == 1
    assert {unwrap(endpoint["signing_secret"], h, b).data.id for h, b in posts} == {batch.id}
    deadline = time.monotonic() + 30
    while event_detail(gateway, endpoint["id"])["state"] != "delivered":
        assert time.monotonic() < deadline, event_detail(gateway, endpoint["id"])
        time.sleep(0.2)
    assert event_detail(gateway, endpoint["id"])["attempts"] == 2


def test_a_worker_frozen_past_its_lease_changes_nothing_when_it_wakes(
    gateway_factory: Any, simulator: SimulatorCluster, receiver: Receiver, tmp_path: Path, database_kind: str
) -> None:
    if database_kind != "postgresql":
        pytest.skip("several workers on one database need PostgreSQL")
    env = simulated_provider_env(simulator, tmp_path, PROVIDERS) | CRASH_ENV
    api: GatewayProcess = gateway_factory(env).start("serve", "--no-worker")
    frozen = worker_process(api, "frozen").start("worker")
    released = threading.Event()
    receiver.answers["/frozen"] = [500]  # what the frozen worker hears when it wakes: a failure
    receiver.held["/frozen"] = released
    endpoint = register(api, "stark", receiver.url("/frozen"))
    client = api.client(api.create_key("stark"))
    wait_for(client, submit(client, chat_requests(2, prefix="freeze")).id, timeout=60)
    receiver.wait_for("/frozen", 1)
    assert frozen.process is not None
    frozen.process.send_signal(signal.SIGSTOP)
    live = worker_process(api, "live").start("worker")
    try:
        receiver.wait_for("/frozen", 2, timeout=60)  # the live worker, once the frozen one's lease ran out
        deadline = time.monotonic() + 30
        while event_detail(api, endpoint["id"])["state"] != "delivered":
            assert time.monotonic() < deadline, event_detail(api, endpoint["id"])
            time.sleep(0.2)
        released.set()  # the frozen worker's attempt now fails (HTTP 500, or its own timeout on waking)
        frozen.process.send_signal(signal.SIGCONT)
        time.sleep(3.0)  # time for the woken worker to record its failure and, were it believed, to post again
        assert len(receiver.received("/frozen")) == 2, "the woken worker's stale failure caused another post"
        event = event_detail(api, endpoint["id"])
        assert (event["state"], event["attempts"], event["last_status"]) == ("delivered", 2, 200)
    finally:
        released.set()
        if frozen.process.poll() is None:
            frozen.process.send_signal(signal.SIGCONT)
        frozen.stop()
        live.stop()
