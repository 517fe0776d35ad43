"""Whole jobs with every blob in S3-compatible object storage (moto's standalone server on loopback).

The gateway runs as ``batchgw serve`` with ``BATCHGW_STORAGE__URL=s3://...``; the official SDK uploads,
creates batches and downloads results. Both execution paths run: a provider batch (OpenAI protocol)
and synchronous fan-out, whose answers are stored as part blobs. On PostgreSQL, the API and a worker
run as two processes with separate, empty data folders: they share only the database and the bucket.
When a job has ended, only its input file and its output and error files may stay in the bucket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, S3Server, free_port, simulated_provider_env
from tests.engine import (
    Outcome,
    assert_all_succeeded,
    batch_creates,
    chat_requests,
    collect,
    emulator_log,
    emulator_stats,
    expected_body,
    query,
    reset,
    set_faults,
    submit,
    wait_for,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

PROVIDERS: dict[str, dict[str, Any]] = {
    "batched": {"emulator": "fast", "models": {"batch-model": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 40}},
    "direct": {
        "emulator": "other",
        "kind": "openai_sync",
        "models": {"sync-model": "gpt-4o-mini"},
        "limits": {"max_concurrency": 4},
    },
}
PREFIX = "gw"


@pytest.fixture(scope="module")
def env(simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


MAX_UPLOAD = 24 * 1024 * 1024
LIMITS = {
    "BATCHGW_LIMITS__MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "BATCHGW_STORAGE__MULTIPART_PART_BYTES": str(5 * 1024 * 1024),  # uploads past 5 MiB go multipart
}


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, env: dict[str, str], s3_server: S3Server, bucket: str) -> GatewayProcess:
    return gateway_factory(env | s3_server.storage_env(bucket, PREFIX) | LIMITS).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def clean_emulators(simulator: SimulatorCluster) -> Iterator[None]:
    reset(simulator, "fast", "other")
    yield


def job_keys(
    gateway: GatewayProcess, s3_server: S3Server, bucket: str, outcome: Outcome, input_file_id: str
) -> dict[str, set[str]]:
    """The bucket's objects that belong to one job, by role, once the job's cleanup has settled.

    The files to keep are those the database names: the input file and the batch's output and error files.
    """
    batch = outcome.batch
    file_ids = [i for i in (input_file_id, batch.output_file_id, batch.error_file_id) if i]
    named = ", ".join(f":f{n}" for n in range(len(file_ids)))
    rows = query(
        gateway, f"SELECT storage_key FROM files WHERE id IN ({named})", **{f"f{n}": i for n, i in enumerate(file_ids)}
    )
    kept = {f"{PREFIX}/{row[0]}" for row in rows}
    assert len(kept) == len(file_ids)
    [(input_key,)] = query(gateway, "SELECT storage_key FROM files WHERE id = :f", f=input_file_id)
    deadline = time.monotonic() + 10
    while True:
        keys = set(s3_server.keys(bucket, f"{PREFIX}/"))
        shards = {k for k in keys if k.startswith(f"{PREFIX}/shards/{batch.id}/")}
        intermediate = {k for k in shards if not k.endswith(".in.jsonl")}
        # A shard's blobs (results, then input) are removed one by one just after the merge commits, so the batch
        # reads completed a moment before they are gone. None of these jobs leaves an abandoned provider batch
        # (whose input would be kept), so every one is waited for.
        if not shards or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {
        "kept": keys & kept,
        "expected_kept": kept,
        "shard_inputs": shards - intermediate,
        "intermediate": intermediate,
        "other": {k for k in keys if batch.id in k} - kept - shards,
        "figures": {k for k in keys if k == f"{PREFIX}/{input_key}.figures"},
        "expected_figures": {f"{PREFIX}/{input_key}.figures"},
    }


@dataclass
class Job:
    """A finished job and what the bucket held afterwards."""

    outcome: Outcome
    requests: list[dict[str, Any]]
    keys: dict[str, set[str]]


def run_job(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    s3_server: S3Server,
    bucket: str,
    requests: list[dict[str, Any]],
    timeout: float = 60,
) -> Job:
    content = "".join(json.dumps(r) + "\n" for r in requests).encode()
    upload = client.files.create(file=("input.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    outcome = collect(client, wait_for(client, batch.id, timeout=timeout))
    return Job(outcome, requests, job_keys(gateway, s3_server, bucket, outcome, upload.id))


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return gateway.client(gateway.create_key("objects"))


@pytest.fixture(scope="module")
def batch_job(
    gateway: GatewayProcess, client: openai.OpenAI, s3_server: S3Server, bucket: str, simulator: SimulatorCluster
) -> Job:
    reset(simulator, "fast")
    job = run_job(gateway, client, s3_server, bucket, chat_requests(100, model="batch-model", prefix="batch"))
    assert len(batch_creates(emulator_log(simulator, "fast"))) == 3  # 100 requests in shards of at most 40
    return job


@pytest.fixture(scope="module")
def fanout_job(
    gateway: GatewayProcess, client: openai.OpenAI, s3_server: S3Server, bucket: str, simulator: SimulatorCluster
) -> Job:
    reset(simulator, "other")
    job = run_job(gateway, client, s3_server, bucket, chat_requests(60, model="sync-model", prefix="sync"))
    assert emulator_stats(simulator, "other")["requests_processed"] == 60  # each request sent once
    return job


def test_a_provider_batch_job_runs_on_object_storage(batch_job: Job) -> None:
    assert_all_succeeded(batch_job.outcome, batch_job.requests, "gpt-4o-mini")


def test_a_fanout_job_runs_on_object_storage(fanout_job: Job) -> None:
    outcome = fanout_job.outcome
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in fanout_job.requests)
    for request in fanout_job.requests:
        body = outcome.output[request["custom_id"]]["response"]["body"]
        expected = expected_body(request, "gpt-4o-mini", body["created"])
        # The synchronous endpoint names its completions itself; everything else is the model's.
        assert {**body, "id": None} == {**expected, "id": None}, request["custom_id"]


def assert_only_input_and_results_stay(job: Job) -> None:
    assert job.keys["kept"] == job.keys["expected_kept"]
    assert job.keys["intermediate"] == set(), "shard results, raw provider results or fan-out parts were left behind"
    assert job.keys["other"] == set()


def test_only_the_input_and_result_files_stay_after_a_provider_batch(batch_job: Job) -> None:
    assert_only_input_and_results_stay(batch_job)


def test_only_the_input_and_result_files_stay_after_fanout(fanout_job: Job) -> None:
    assert_only_input_and_results_stay(fanout_job)


def test_the_input_files_request_figures_stay_beside_it_in_the_bucket(batch_job: Job, fanout_job: Job) -> None:
    """Validation keeps each request's figures for routing beside the input file (these uploads are too small to be
    checked while they arrive); they stay while the file does."""
    for job in (batch_job, fanout_job):
        assert job.keys["figures"] == job.keys["expected_figures"]


def test_shard_inputs_are_removed_when_the_job_ends(batch_job: Job, fanout_job: Job) -> None:
    assert batch_job.keys["shard_inputs"] | fanout_job.keys["shard_inputs"] == set()


def test_the_local_data_folder_holds_no_blobs(gateway: GatewayProcess, batch_job: Job, fanout_job: Job) -> None:
    blobs = gateway.data_dir / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
    scratch = gateway.data_dir / "scratch"
    assert not any(scratch.iterdir()), "local copies or staged files were left in the scratch folder"


def test_the_api_serves_results_straight_from_the_bucket(
    gateway: GatewayProcess, client: openai.OpenAI, s3_server: S3Server, bucket: str, batch_job: Job
) -> None:
    file_id = batch_job.outcome.batch.output_file_id
    assert file_id is not None
    [(key,)] = query(gateway, "SELECT storage_key FROM files WHERE id = :f", f=file_id)
    stored = s3_server.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
    assert client.files.content(file_id).read() == stored["Body"].read()
    assert client.files.retrieve(file_id).bytes == stored["ContentLength"]


def test_an_upload_refused_midway_leaves_nothing_in_the_bucket(
    client: openai.OpenAI, s3_server: S3Server, bucket: str
) -> None:
    before = set(s3_server.keys(bucket))
    line = json.dumps(chat_requests(1)[0]).encode() + b"\n"
    content = line * (MAX_UPLOAD // len(line) + 1000)  # several parts are stored before the limit is passed
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.jsonl", content), purpose="batch")
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "file_too_large"  # type: ignore[index]
    assert set(s3_server.keys(bucket)) == before
    assert s3_server.pending_uploads(bucket) == []


# --- API and worker on different nodes ------------------------------------------------------------------------


@pytest.mark.database("postgresql", reason="an API and a worker process on one database need PostgreSQL")
def test_api_and_worker_share_only_the_database_and_the_bucket(
    gateway_factory: Any,
    env: dict[str, str],
    s3_server: S3Server,
    simulator: SimulatorCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    own_bucket = s3_server.new_bucket()
    storage = env | s3_server.storage_env(own_bucket, PREFIX)
    api: GatewayProcess = gateway_factory(storage).start("serve", "--no-worker")
    worker_dir = tmp_path_factory.mktemp("worker-node")
    worker = GatewayProcess(data_dir=worker_dir, database_url=api.database_url, port=free_port(), extra_env=storage)
    worker.start("worker")
    try:
        client = api.client(api.create_key("split"))
        # One file, two models: one part runs as a provider batch, the other as fan-out.
        requests = chat_requests(50, model="batch-model", prefix="b") + chat_requests(
            30, model="sync-model", prefix="s"
        )
        job = run_job(api, client, s3_server, own_bucket, requests, timeout=90)
    finally:
        worker.stop()
    outcome = job.outcome
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests)
    assert {line["provider"] for line in outcome.output.values()} == {"batched", "direct"}
    assert "submitted to batched" in worker.log() and "submitted to" not in api.log()
    assert job.keys["kept"] == job.keys["expected_kept"]
    assert job.keys["intermediate"] == set() and job.keys["other"] == set()
    for node in (api.data_dir, worker_dir):
        assert not any(p.is_file() and p.parent.name in ("blobs", "scratch") for p in Path(node).rglob("*"))


def test_a_fanout_shard_resumes_from_its_parts_on_another_node(
    gateway_factory: Any,
    env: dict[str, str],
    s3_server: S3Server,
    simulator: SimulatorCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    own_bucket = s3_server.new_bucket()
    storage = env | s3_server.storage_env(own_bucket, PREFIX) | {"BATCHGW_WORKER__LEASE_S": "3"}
    api: GatewayProcess = gateway_factory(storage).start("serve", "--no-worker")
    client = api.client(api.create_key("resume"))
    set_faults(simulator, "other", latency_s=0.25)  # 4 at a time: about 16 answers a second, published every second
    requests = chat_requests(40, model="sync-model", prefix="resume")
    batch = submit(client, requests)
    dying = GatewayProcess(
        data_dir=tmp_path_factory.mktemp("node-a"),
        database_url=api.database_url,
        port=free_port(),
        extra_env=storage | {"BATCHGW_CRASH_AT": "fanout.after_request:30"},
    )
    dying.start("worker")
    assert dying.process is not None and dying.process.wait(timeout=60) == -9  # killed itself mid-shard
    parts = [k for k in s3_server.keys(own_bucket, f"{PREFIX}/shards/{batch.id}/") if ".fanout/" in k]
    assert parts, "no answers were published to the bucket before the worker died"
    sent_before = emulator_stats(simulator, "other")["requests_processed"]
    survivor = GatewayProcess(
        data_dir=tmp_path_factory.mktemp("node-b"), database_url=api.database_url, port=free_port(), extra_env=storage
    )
    survivor.start("worker")
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=90))
    finally:
        survivor.stop()
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests)
    resent = emulator_stats(simulator, "other")["requests_processed"] - 40
    # Answers published before the kill were not asked for again; those after the last publish were.
    assert 0 <= resent < sent_before, f"{resent} of the {sent_before} requests sent before the kill went again"
