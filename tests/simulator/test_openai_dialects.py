"""The OpenAI emulator switched into Azure's, Groq's and Together's dialects, over real loopback HTTP.

Each dialect is driven the way its own clients drive it: raw HTTP in the provider's shapes, and the official
``openai`` SDK where the provider is wire-compatible with it (Groq).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import loopback
from tests.simulator.openai_emulators import CHAT, chat_line, lines_of

KEY = "sk-dialect-key-0123456789"
MODEL = "gpt-4o-mini"
EMBEDDINGS = "/v1/embeddings"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name=dialect, dialect=dialect, models=[MODEL], api_key=KEY, processing_delay_s=0.1)  # type: ignore[arg-type]
        for dialect in ("azure", "groq", "together")
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    for name in cluster.names():
        cluster.reset(name)


def http(cluster: SimulatorCluster, name: str) -> httpx.Client:
    auth = {"api-key": KEY} if name == "azure" else {"Authorization": f"Bearer {KEY}"}
    return httpx.Client(base_url=cluster.base_url(name), headers=auth, timeout=10)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: httpx.Client, lines: list[dict[str, Any]], purpose: str) -> httpx.Response:
    return client.post("/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": purpose})


def wait_done(client: httpx.Client, batch_id: str, done: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in done:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not end")


def test_azure_takes_the_key_in_api_key_and_writes_its_older_shapes(cluster: SimulatorCluster) -> None:
    assert cluster.base_url("azure").endswith("/openai/v1")
    bearer = loopback.get(f"{cluster.base_url('azure')}/files", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 401 and "Access denied" in bearer.json()["error"]["message"]
    assert KEY not in bearer.text
    with http(cluster, "azure") as client:
        file_id = upload(client, lines_of(4), "batch").json()["id"]
        created = client.post("/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
        assert created.status_code == 200 and created.json()["status"] == "Validating"
        assert isinstance(created.json()["created_at"], str) and created.json()["created_at"].endswith("Z")
        batch = wait_done(client, created.json()["id"], {"Completed", "Failed"})
        assert batch["status"] == "Completed" and batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
        assert isinstance(batch["completed_at"], str)
        # A completed job still points error_file_id at a file, an empty one.
        assert batch["error_file_id"] and client.get(f"/files/{batch['error_file_id']}/content").content == b""
        output = client.get(f"/files/{batch['output_file_id']}/content").text.splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == [f"req-{i:03d}" for i in range(4)]


def test_groq_takes_windows_from_24h_to_7d_and_serves_chat_only(cluster: SimulatorCluster) -> None:
    client = openai.OpenAI(base_url=cluster.base_url("groq"), api_key=KEY, max_retries=0)
    assert cluster.base_url("groq").endswith("/openai/v1")
    file = client.files.create(file=("in.jsonl", jsonl(lines_of(3))), purpose="batch")
    for window in ("24h", "48h", "7d", "168h"):
        batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window=window)  # type: ignore[arg-type]
        hours = int(window[:-1]) * (24 if window.endswith("d") else 1)
        assert batch.completion_window == window and batch.expires_at == batch.created_at + hours * 3600
    for window in ("12h", "8d", "24", "1w", "0h"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window=window)  # type: ignore[arg-type]
        assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "completion_window"
    with pytest.raises(openai.BadRequestError) as embeddings:
        client.batches.create(input_file_id=file.id, endpoint=EMBEDDINGS, completion_window="24h")
    assert isinstance(embeddings.value.body, dict) and embeddings.value.body["param"] == "endpoint"
    done = client.batches.retrieve(client.batches.list().data[-1].id)
    deadline = time.monotonic() + 20
    while done.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
        done = client.batches.retrieve(done.id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 3
    assert done.model is None and done.usage is None  # Groq's batch object has neither


def test_together_wraps_its_job_and_keeps_no_metadata(cluster: SimulatorCluster) -> None:
    with http(cluster, "together") as client:
        refused = upload(client, lines_of(2), "batch")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "purpose"
        lines = [{"custom_id": line["custom_id"], "body": line["body"]} for line in lines_of(3)]  # no method/url
        file_id = upload(client, lines, "batch-api").json()["id"]
        body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", "metadata": {"k": "v"}}
        created = client.post("/batches", json=body).json()
        job = created["job"]
        assert set(created) == {"job"} and job["status"] == "VALIDATING" and "metadata" not in job
        assert job["input_file_id"] == file_id and job["file_size_bytes"] > 0 and job["progress"] == 0.0
        done = wait_done(client, job["id"], {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED" and done["progress"] == 100.0 and done["model_id"] == MODEL
        assert isinstance(done["created_at"], str) and isinstance(done["completed_at"], str)
        assert "request_counts" not in done and done["error"] is None
        listed = client.get("/batches").json()
        assert isinstance(listed, list) and [j["id"] for j in listed] == [job["id"]]
        output = client.get(f"/files/{done['output_file_id']}/content").text.splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == ["req-000", "req-001", "req-002"]


def test_together_refuses_a_long_custom_id_by_its_line(cluster: SimulatorCluster) -> None:
    with http(cluster, "together") as client:
        lines = [chat_line("ok", "hello"), chat_line("x" * 65, "too long an id")]
        file_id = upload(client, lines, "batch-api").json()["id"]
        job = client.post("/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
        done = wait_done(client, job.json()["job"]["id"], {"COMPLETED", "FAILED"})
        assert done["status"] == "FAILED" and "at most 64 characters" in done["error"]
        cancel = client.post(f"/batches/{done['id']}/cancel")
        assert cancel.status_code == 409 and "FAILED" in cancel.json()["error"]["message"]


def test_a_dialect_needs_the_openai_kind() -> None:
    with pytest.raises(ValueError, match="needs kind 'openai'"):
        ProviderSpec(name="x", kind="anthropic", dialect="azure")
