"""Batches run end to end on the emulator: exact results, usage and counts, splitting, caps, progress, cancel."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import text

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import (
    ACTIVE_EMULATOR_STATES,
    CHAT,
    EMBEDDINGS,
    assert_all_succeeded,
    assert_submitted_once,
    assert_succeeded,
    batch_creates,
    cancel,
    cancel_calls,
    chat_request,
    chat_requests,
    collect,
    embedding_request,
    emulator_log,
    emulator_stats,
    query,
    reset,
    submit,
    sync_engine,
    wait_for,
)

BYTES_LIMIT = 2048

EMBEDDING_MODEL = "text-embedding-3-small"
PROVIDERS: dict[str, dict[str, Any]] = {
    "main": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini", EMBEDDING_MODEL: EMBEDDING_MODEL}},
    "second": {"emulator": "other", "models": {"llama-3.3-70b": "llama-3.3-70b"}},
    "split7": {"emulator": "fast", "models": {"split7": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 7}},
    "splitbytes": {
        "emulator": "fast",
        "models": {"splitbytes": "gpt-4o-mini"},
        "limits": {"max_bytes_per_batch": BYTES_LIMIT},
    },
    "serial": {
        "emulator": "steady",
        "models": {"serial": "gpt-4o-mini"},
        "limits": {"max_requests_per_batch": 5, "max_batches_in_flight": 1},
    },
    "slowp": {"emulator": "slow", "models": {"slow": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 10}},
}


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)
    return gateway_factory(env).start()


@pytest.fixture(autouse=True)
def fresh_emulators(simulator: SimulatorCluster) -> Iterator[None]:
    reset(simulator, *simulator.names())
    yield


def test_chat_batch_has_one_exact_line_per_request_and_summed_usage(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    requests = chat_requests(30)
    batch = wait_for(client, submit(client, requests).id)
    outcome = collect(client, batch)
    assert_all_succeeded(outcome, requests, "gpt-4o-mini")
    for request in requests:
        assert outcome.output[request["custom_id"]]["id"].startswith("batch_req_")
    assert batch.model == "gpt-4o-mini"
    assert_submitted_once(gateway, simulator, "fast", batch.id)


def test_output_files_expire_thirty_days_after_they_are_written_or_as_output_expires_after_says(
    client: openai.OpenAI,
) -> None:
    content = "".join(json.dumps(r) + "\n" for r in chat_requests(3)).encode()
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    kept_an_hour = client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    default = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    for batch_id, seconds in ((kept_an_hour.id, 3600), (default.id, 30 * 24 * 3600)):
        batch = wait_for(client, batch_id)
        assert batch.status == "completed" and batch.output_file_id
        output = client.files.retrieve(batch.output_file_id)
        assert output.purpose == "batch_output"
        assert batch.completed_at is not None and batch.created_at <= output.created_at <= batch.completed_at
        assert output.expires_at == output.created_at + seconds


def test_embeddings_batch(client: openai.OpenAI, simulator: SimulatorCluster) -> None:
    requests = [embedding_request(f"emb-{i}", f"text to embed number {i} " * (i + 1)) for i in range(12)]
    batch = wait_for(client, submit(client, requests, endpoint=EMBEDDINGS).id)
    outcome = collect(client, batch)
    assert_all_succeeded(outcome, requests, EMBEDDING_MODEL)
    assert batch.endpoint == EMBEDDINGS
    assert batch.usage is not None and batch.usage.input_tokens > 0 and batch.usage.output_tokens == 0
    assert [e["detail"]["input_lines"] for e in batch_creates(emulator_log(simulator, "fast"))] == [12]


def test_job_over_the_request_limit_is_split_and_merged(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    requests = chat_requests(50, model="split7")
    batch = wait_for(client, submit(client, requests).id)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    creates = batch_creates(emulator_log(simulator, "fast"))
    assert sorted(e["detail"]["input_lines"] for e in creates) == [1] + [7] * 7
    assert emulator_stats(simulator, "fast")["batches_created"] == 8
    assert_submitted_once(gateway, simulator, "fast", batch.id)


def test_job_over_the_byte_limit_is_split_and_merged(client: openai.OpenAI, simulator: SimulatorCluster) -> None:
    requests = chat_requests(40, model="splitbytes")
    batch = wait_for(client, submit(client, requests).id)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    log = emulator_log(simulator, "fast")
    uploads = [e["detail"]["bytes"] for e in log if e["method"] == "POST" and e["path"] == "/v1/files"]
    creates = batch_creates(log)
    assert all(size <= BYTES_LIMIT for size in uploads), uploads
    assert len(creates) == len(uploads) >= max(2, -(-sum(uploads) // BYTES_LIMIT))
    assert sum(e["detail"]["input_lines"] for e in creates) == 40


def test_batches_in_flight_cap_keeps_one_provider_batch_running(
    client: openai.OpenAI, simulator: SimulatorCluster
) -> None:
    requests = chat_requests(15, model="serial")
    batch = submit(client, requests)
    most_active = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and client.batches.retrieve(batch.id).status not in ("completed", "failed"):
        by_status = emulator_stats(simulator, "steady")["batches"]
        active = sum(n for status, n in by_status.items() if status in ACTIVE_EMULATOR_STATES)
        most_active = max(most_active, active)
        assert active <= 1, "two provider batches ran at once"
        time.sleep(0.05)
    batch = wait_for(client, batch.id, timeout=1)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    created_at = [e["timestamp"] for e in batch_creates(emulator_log(simulator, "steady"))]
    assert len(created_at) == 3 and most_active == 1
    # Each provider batch takes about a second: the next one may only start after it.
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(created_at))


def test_request_counts_are_current_while_running(client: openai.OpenAI) -> None:
    requests = chat_requests(40, model="slow")
    batch = submit(client, requests)
    seen: list[tuple[str, int, int, int]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = client.batches.retrieve(batch.id)
        assert current.request_counts is not None
        counts = current.request_counts
        seen.append((current.status, counts.total, counts.completed, counts.failed))
        if current.status in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.1)
    running = [s for s in seen if s[0] == "in_progress"]
    assert running and all(total == 40 for _, total, _, _ in running)
    completed = [c for _, _, c, _ in seen]
    assert completed == sorted(completed), f"completed went backwards: {completed}"
    assert any(0 < c < 40 for _, _, c, _ in running), f"no partial progress was reported: {seen}"
    assert seen[-1] == ("completed", 40, 40, 0)


def test_file_mixing_two_models_on_two_providers_gives_one_output(
    client: openai.OpenAI, simulator: SimulatorCluster
) -> None:
    models = ["llama-3.3-70b", "gpt-4o-mini", "gpt-4o-mini"]
    requests = [chat_request(f"mix-{i:02d}", f"mixed question {i}", models[i % 3]) for i in range(24)]
    batch = wait_for(client, submit(client, requests).id)
    outcome = collect(client, batch)
    assert_all_succeeded(outcome, requests, lambda r: r["body"]["model"])  # type: ignore[arg-type]
    assert batch.model is None
    assert [e["detail"]["input_lines"] for e in batch_creates(emulator_log(simulator, "fast"))] == [16]
    assert [e["detail"]["input_lines"] for e in batch_creates(emulator_log(simulator, "other"))] == [8]


def test_cancel_mid_run_keeps_finished_results(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    requests = chat_requests(40, model="slow")
    batch = submit(client, requests)
    running = wait_for(
        client,
        batch.id,
        lambda b: b.status == "in_progress" and b.request_counts.completed > 0,  # type: ignore[union-attr]
    )
    assert running.request_counts is not None and running.request_counts.completed < 40
    cancelling = cancel(client, batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_for(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    outcome = collect(client, batch)
    assert set(outcome.output) | set(outcome.errors) == {r["custom_id"] for r in requests}
    assert outcome.output and outcome.errors
    finished = [r for r in requests if r["custom_id"] in outcome.output]
    input_tokens, output_tokens = assert_succeeded(outcome, finished, "gpt-4o-mini")
    for line in outcome.errors.values():
        assert line["response"] is None and line["error"]["code"] == "batch_cancelled", line
    assert batch.request_counts is not None and batch.usage is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (40, len(outcome.output), len(outcome.errors))
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (input_tokens, output_tokens)
    log = emulator_log(simulator, "slow")
    created = {e["detail"]["batch_id"] for e in batch_creates(log)}
    assert len(created) == 4 and cancel_calls(log) == created
    assert_submitted_once(gateway, simulator, "slow", batch.id)


@contextlib.contextmanager
def batch_row_locked(gateway: GatewayProcess, batch_id: str) -> Iterator[None]:
    """Hold a PostgreSQL row lock on the batch, as a slow concurrent transaction on that row would."""
    engine = sync_engine(gateway)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            connection.execute(text("SELECT id FROM batches WHERE id = :b FOR UPDATE"), {"b": batch_id})
            yield
            transaction.rollback()
    finally:
        engine.dispose()


def test_shards_finishing_together_keep_exact_totals(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, database_kind: str
) -> None:
    """Seven shards finish while another transaction holds the batch row; the totals must still add up."""
    if database_kind != "postgresql":
        pytest.skip("SQLite runs one write transaction at a time: shards cannot finish together")
    requests = chat_requests(49, model="split7")
    batch = submit(client, requests)
    deadline = time.monotonic() + 20
    while query(gateway, "SELECT stage FROM batches WHERE id = :b", b=batch.id) != [("run",)]:
        assert time.monotonic() < deadline, "the batch was not routed"
        time.sleep(0.02)
    with batch_row_locked(gateway, batch.id):
        # Every shard fetches its results, then waits for the batch row to record them.
        while sum(e["path"].endswith("/content") for e in emulator_log(simulator, "fast")) < 7:
            assert time.monotonic() < deadline, emulator_log(simulator, "fast")
            time.sleep(0.05)
        time.sleep(0.5)
    batch = wait_for(client, batch.id)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
