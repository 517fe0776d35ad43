"""The OpenAI emulator's faults and its control server, over real loopback HTTP, judged by the official SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import openai
import pytest

from gateway.simulator import (
    Faults,
    SimulatorCluster,
    hash_fraction,
)
from tests.simulator.openai_emulators import (
    HTTP,
    KEY,
    control,
    jsonl,
    lines_of,
    set_faults,
    submit,
    wait,
)

# --- faults, switched through the control API -------------------------------------------------------


def test_refused_connection_and_recovery(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    port = cluster.port_of("main")
    set_faults(cluster, down="refuse")
    with pytest.raises(openai.APIConnectionError):
        client.files.list()
    listed = {p["name"]: p for p in control(cluster, "GET", "/providers").json()}
    assert listed["main"]["listening"] is False and listed["main"]["faults"]["down"] == "refuse"
    set_faults(cluster, down="off")
    assert client.files.list().data == [] and cluster.port_of("main") == port


def test_going_down_drops_a_connection_whose_request_is_still_arriving(cluster: SimulatorCluster) -> None:
    """An upload still arriving when the provider goes down gets no answer: its connection is dropped, as a server
    that goes down drops it, rather than the upload finishing and being answered."""
    started = threading.Event()

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        started.set()
        time.sleep(1.0)  # the provider goes down meanwhile
        yield b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n\r\n--b--\r\n'

    going_down = threading.Thread(target=lambda: started.wait(10) and set_faults(cluster, down="refuse"))
    going_down.start()
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "multipart/form-data; boundary=b"}
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{cluster.base_url('main')}/files", content=body(), headers=headers, timeout=10)
    going_down.join()
    assert [p["listening"] for p in control(cluster, "GET", "/providers").json() if p["name"] == "main"] == [False]


def test_outage_answers_503(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, down="503")
    with pytest.raises(openai.InternalServerError) as outage:
        client.batches.list()
    assert outage.value.status_code == 503 and outage.value.response.headers["x-request-id"]
    assert isinstance(outage.value.body, dict) and outage.value.body["type"] == "server_error"


def test_rate_limit_with_retry_after(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, rate_limit_next=2, retry_after_s=7)
    raw = HTTP.get(f"{cluster.base_url('main')}/files", headers={"Authorization": f"Bearer {KEY}"})
    assert raw.status_code == 429 and raw.headers["retry-after"] == "7"
    assert raw.json()["error"]["code"] == "rate_limit_exceeded" and raw.json()["error"]["param"] is None
    with pytest.raises(openai.RateLimitError):
        client.files.list()
    client.files.list()
    set_faults(cluster, rate_limit_rate=1.0)
    with pytest.raises(openai.RateLimitError):
        client.files.list()


def test_server_errors_and_latency(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, error_5xx_rate=1.0)
    with pytest.raises(openai.InternalServerError) as failure:
        client.files.list()
    assert failure.value.status_code == 500
    set_faults(cluster, error_5xx_rate=0.0, latency_s=0.3)
    start = time.monotonic()
    client.files.list()
    assert time.monotonic() - start >= 0.3


def test_fail_fraction_fails_chosen_ids(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, fail_fraction=0.5)
    lines = lines_of(40)
    batch = wait(client, submit(client, lines).id)
    expected = {line["custom_id"] for line in lines if hash_fraction(line["custom_id"]) < 0.5}
    errors = jsonl(client, batch.error_file_id)
    assert {e["custom_id"] for e in errors} == expected and 0 < len(expected) < 40
    assert {(e["response"]["status_code"], e["response"]["body"]["error"]["type"]) for e in errors} == {
        (500, "server_error")
    }
    assert batch.request_counts is not None and batch.request_counts.failed == len(expected)


def test_output_order_without_shuffle(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, shuffle_output=False)
    lines = lines_of(15)
    batch = wait(client, submit(client, lines).id)
    assert [o["custom_id"] for o in jsonl(client, batch.output_file_id)] == [x["custom_id"] for x in lines]


def test_expiry_mid_batch(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, expire=True, expire_after_fraction=0.5)
    batch = wait(client, submit(client, lines_of(10)).id)
    assert batch.status == "expired" and batch.expired_at and batch.completed_at is None
    assert len(jsonl(client, batch.output_file_id)) == 5
    errors = jsonl(client, batch.error_file_id)
    assert len(errors) == 5 and all(e["response"] is None for e in errors)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_malformed_output_line(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, malformed_output_line=True)
    batch = wait(client, submit(client, lines_of(6)).id)
    broken = 0
    for text in client.files.content(batch.output_file_id or "").text.splitlines():
        try:
            json.loads(text)
        except json.JSONDecodeError:
            broken += 1
    assert broken == 1


def test_stall_then_release_and_clock_expiry(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    set_faults(cluster, stall=True)
    first, second = submit(client, lines_of(4)), submit(client, lines_of(4))
    time.sleep(0.4)
    for batch_id in (first.id, second.id):
        stalled = client.batches.retrieve(batch_id)
        assert stalled.status == "in_progress" and stalled.request_counts is not None
        assert stalled.request_counts.completed == 0
    control(cluster, "POST", "/providers/main/clock", {"advance_s": 25 * 3600}).raise_for_status()
    expired = wait(client, first.id)
    assert expired.status == "expired" and len(jsonl(client, expired.error_file_id)) == 4
    control(cluster, "POST", "/providers/main/reset").raise_for_status()
    third = submit(client, lines_of(3))
    cluster.state("main").faults.stall = True  # in-process switch works too
    set_faults(cluster, stall=False)
    assert wait(client, third.id).status == "completed"


# --- the control server ---------------------------------------------------------------------------------


def test_control_api(cluster: SimulatorCluster, client: openai.OpenAI) -> None:
    listed = control(cluster, "GET", "/providers").json()
    assert [(p["name"], p["port"]) for p in listed] == [(n, cluster.port_of(n)) for n in ("main", "slow")]
    assert listed[0]["faults"] == msgspec.to_builtins(Faults()) and listed[0]["listening"] is True
    bad = control(cluster, "POST", "/providers/main/faults", {"no_such_fault": 1})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert control(cluster, "POST", "/providers/main/faults", {"fail_fraction": 2}).status_code == 400
    assert control(cluster, "GET", "/providers/nope/log").status_code == 404
    batch = wait(client, submit(client, lines_of(3), metadata={"tag": "t-1"}).id)
    entries = control(cluster, "GET", "/providers/main/log").json()["data"]
    create = next(e for e in entries if e["method"] == "POST" and e["path"] == "/v1/batches")
    assert create["status"] == 200 and create["detail"]["metadata"] == {"tag": "t-1"}
    assert create["detail"]["input_lines"] == 3 and create["detail"]["batch_id"] == batch.id
    assert all(e["request_id"].startswith("req_") for e in entries)
    stats = control(cluster, "GET", "/providers/main/stats").json()
    assert (stats["files_uploaded"], stats["batches_created"], stats["requests_processed"]) == (1, 1, 3)
    assert stats["batches"] == {"completed": 1}
    cluster.set_faults("main", fail_fraction=1.0)
    assert cluster.state("main").faults.fail_fraction == 1.0
    cluster.reset("main")
    assert cluster.state("main").faults == Faults() and not cluster.state("main").jobs
