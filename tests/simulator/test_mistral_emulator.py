"""The Mistral batch emulator over real loopback HTTP, in Mistral's own shapes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import loopback

KEY = "mistral-emulator-key-1f0c"
MODEL = "mistral-small-latest"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(name="mistral", kind="mistral", models=[MODEL], api_key=KEY, processing_delay_s=0.1)
    with SimulatorCluster([spec], control_port=None) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    cluster.reset("mistral")


@pytest.fixture
def client(cluster: SimulatorCluster) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=cluster.base_url("mistral"), headers=headers, timeout=10) as http:
        yield http


def line(custom_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": text}], **fields}}


def wait_done(client: httpx.Client, job_id: str, **params: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/batch/jobs/{job_id}", params=params).json()
        if job["status"] in ("SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_a_file_job_runs_to_success_with_mistral_shaped_files(client: httpx.Client) -> None:
    content = "".join(json.dumps(line(f"r{i}", f"question {i}")) + "\n" for i in range(3)).encode()
    uploaded = client.post("/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}).json()
    assert uploaded["sample_type"] == "batch_request" and uploaded["num_lines"] == 3 and uploaded["source"] == "upload"
    body = {"input_files": [uploaded["id"]], "endpoint": CHAT, "model": MODEL, "metadata": {"k": "v"}}
    created = client.post("/batch/jobs", json=body).json()
    assert created["status"] == "QUEUED" and created["object"] == "batch" and created["metadata"] == {"k": "v"}
    job = wait_done(client, created["id"], inline="true")
    assert job["status"] == "SUCCESS" and job["error_file"] is None and job["errors"] == []
    counts = [job[k] for k in ("total_requests", "completed_requests", "succeeded_requests", "failed_requests")]
    assert counts == [3, 3, 3, 0] and job["started_at"] and job["completed_at"]
    assert sorted(o["custom_id"] for o in job["outputs"]) == ["r0", "r1", "r2"]
    output = client.get(f"/files/{job['output_file']}")
    assert output.json()["sample_type"] == "batch_result" and output.json()["source"] == "mistral"
    lines = [json.loads(raw) for raw in client.get(f"/files/{job['output_file']}/content").text.splitlines()]
    assert all(set(item["response"]) == {"status_code", "body"} for item in lines)  # no request_id
    assert all(item["id"].startswith("batch-") for item in lines)
    listed = client.get("/batch/jobs", params={"page_size": 1}).json()
    assert listed["total"] == 1 and [j["id"] for j in listed["data"]] == [job["id"]]


def test_create_refusals(client: httpx.Client) -> None:
    both = {"input_files": ["f"], "requests": [line("a", "x")], "endpoint": CHAT, "model": MODEL}
    assert client.post("/batch/jobs", json=both).status_code == 400
    neither = {"endpoint": CHAT, "model": MODEL}
    assert client.post("/batch/jobs", json=neither).status_code == 400
    unknown = client.post("/batch/jobs", json={"endpoint": CHAT, "model": MODEL, "requests": [], "colour": 1})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][0] == "body"
    too_long = {"requests": [line("a", "x")], "endpoint": CHAT, "model": MODEL, "timeout_hours": 168}
    assert client.post("/batch/jobs", json=too_long).status_code == 422
    wrong_model = {"requests": [line("a", "x")], "endpoint": CHAT, "model": "mistral-huge"}
    assert client.post("/batch/jobs", json=wrong_model).json()["param"] == "model"
    assert loopback.get(f"{client.base_url}/batch/jobs").status_code == 401


def test_inline_job_with_a_field_mistral_refuses_gets_a_422_line(client: httpx.Client) -> None:
    requests = [line("ok", "hello"), line("odd", "hello", max_completion_tokens=5)]
    created = client.post("/batch/jobs", json={"requests": requests, "endpoint": CHAT, "model": MODEL}).json()
    job = wait_done(client, created["id"])
    assert (job["succeeded_requests"], job["failed_requests"]) == (1, 1) and job["input_files"] == []
    [error] = [json.loads(raw) for raw in client.get(f"/files/{job['error_file']}/content").text.splitlines()]
    assert error["custom_id"] == "odd" and error["response"]["status_code"] == 422
    inline = client.get(f"/batch/jobs/{job['id']}", params={"inline": "true"}).json()
    assert sorted(o["custom_id"] for o in inline["outputs"]) == ["odd", "ok"]  # both files' lines


def test_results_inline_only_names_no_file_and_answers_every_line_inline(
    cluster: SimulatorCluster, client: httpx.Client
) -> None:
    cluster.set_faults("mistral", results_inline_only=True, fail_fraction=0.5)
    requests = [line(f"r{i}", f"question {i}") for i in range(6)]
    created = client.post("/batch/jobs", json={"requests": requests, "endpoint": CHAT, "model": MODEL}).json()
    job = wait_done(client, created["id"])
    assert job["output_file"] is None and job["error_file"] is None and job["outputs"] is None
    assert job["failed_requests"] > 0 and job["succeeded_requests"] > 0
    inline = client.get(f"/batch/jobs/{job['id']}", params={"inline": "true"}).json()
    assert sorted(o["custom_id"] for o in inline["outputs"]) == [f"r{i}" for i in range(6)]



def test_cancel_and_timeout(cluster: SimulatorCluster, client: httpx.Client) -> None:
    cluster.set_faults("mistral", stall=True)
    request = {"requests": [line("a", "x")], "endpoint": CHAT, "model": MODEL, "timeout_hours": 1}
    cancelled = client.post("/batch/jobs", json=request).json()
    assert client.post(f"/batch/jobs/{cancelled['id']}/cancel").json()["status"] == "CANCELLATION_REQUESTED"
    assert wait_done(client, cancelled["id"])["status"] == "CANCELLED"
    assert client.post(f"/batch/jobs/{cancelled['id']}/cancel").status_code == 400
    timed_out = client.post("/batch/jobs", json=request).json()
    cluster.state("mistral").clock.offset_s += 2 * 3600
    assert wait_done(client, timed_out["id"])["status"] == "TIMEOUT_EXCEEDED"


def test_a_list_page_that_is_not_a_whole_number_is_a_422_not_a_server_error(client: httpx.Client) -> None:
    for params in ({"page": "abc"}, {"page_size": "0"}, {"page": "-1"}):
        answer = client.get("/batch/jobs", params=params)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] in params
