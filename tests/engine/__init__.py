"""End-to-end tests of the execution engine: the official SDK talks to a ``batchgw`` process, which
runs the batches on the provider emulator. Shared helpers live here.

Results are always joined on ``custom_id``: the emulator shuffles its output files.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from gateway.simulator import SimulatorCluster
from gateway.simulator.openai_protocol import chat_completion, embeddings
from tests.conftest import GatewayProcess, loopback, simulated_provider_env

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ACTIVE_EMULATOR_STATES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


# --- requests --------------------------------------------------------------------------------------------


def chat_request(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """One input line for /v1/chat/completions."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def embedding_request(custom_id: str, text: str, model: str = "text-embedding-3-small") -> dict[str, Any]:
    """One input line for /v1/embeddings."""
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": {"model": model, "input": text}}


def chat_requests(count: int, model: str = "gpt-4o-mini", prefix: str = "req") -> list[dict[str, Any]]:
    """``count`` chat lines with distinct prompts of varying length."""
    return [chat_request(f"{prefix}-{i:05d}", f"question {i}: " + "why " * (i % 7), model) for i in range(count)]


def submit(client: openai.OpenAI, requests: Iterable[dict[str, Any]], endpoint: str = CHAT) -> Batch:
    """Upload the lines as a batch input file and create a batch on it."""
    content = "".join(json.dumps(r) + "\n" for r in requests).encode()
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]


def wait_for(
    client: openai.OpenAI, batch_id: str, until: Callable[[Batch], bool] | None = None, timeout: float = 60.0
) -> Batch:
    """Poll the gateway until ``until(batch)`` holds (default: a terminal status)."""
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch) if until else batch.status in TERMINAL:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not reach the expected state in {timeout}s: {batch}")


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The lines of a gateway file; an absent file (None) has none."""
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Result lines keyed by custom_id; fails if one appears twice."""
    keyed = {line["custom_id"]: line for line in lines}
    assert len(keyed) == len(lines), "a custom_id appears more than once"
    return keyed


# --- expected results from the emulator's deterministic model ----------------------------------------------


def expected_body(request: dict[str, Any], provider_model: str, created: int) -> dict[str, Any]:
    """The response body the emulator gives this request once the gateway sent it as ``provider_model``."""
    body = {**request["body"], "model": provider_model}
    if request["url"] == CHAT:
        return chat_completion(body, [provider_model], request["custom_id"], created)
    return embeddings(body, [provider_model])


@dataclass
class Outcome:
    """A finished batch and its two files, keyed by custom_id."""

    batch: Batch
    output: dict[str, dict[str, Any]]
    errors: dict[str, dict[str, Any]]


def collect(client: openai.OpenAI, batch: Batch) -> Outcome:
    """Download the batch's output and error files; every custom_id must appear once across both."""
    output, errors = read_jsonl(client, batch.output_file_id), read_jsonl(client, batch.error_file_id)
    keyed_output, keyed_errors = by_custom_id(output), by_custom_id(errors)
    assert not set(keyed_output) & set(keyed_errors), "a custom_id is in both the output and the error file"
    return Outcome(batch, keyed_output, keyed_errors)


def assert_succeeded(
    outcome: Outcome, requests: Iterable[dict[str, Any]], provider_model: Callable[[dict[str, Any]], str] | str
) -> tuple[int, int]:
    """Each request has a 200 line with the emulator's exact body; returns (input, output) tokens summed."""
    input_tokens = output_tokens = 0
    for request in requests:
        line = outcome.output.get(request["custom_id"])
        assert line is not None, f"no output line for {request['custom_id']}"
        assert line["error"] is None and line["response"]["status_code"] == 200, line
        body = line["response"]["body"]
        model = provider_model(request) if callable(provider_model) else provider_model
        assert body == expected_body(request, model, body.get("created", 0)), request["custom_id"]
        input_tokens += body["usage"]["prompt_tokens"]
        output_tokens += body["usage"].get("completion_tokens", 0)
    return input_tokens, output_tokens


def assert_all_succeeded(outcome: Outcome, requests: list[dict[str, Any]], provider_model: str) -> None:
    """Every request succeeded, and the batch's counts and usage are the sums of its lines."""
    assert outcome.batch.status == "completed", outcome.batch
    assert set(outcome.output) == {r["custom_id"] for r in requests}
    assert not outcome.errors and outcome.batch.error_file_id is None
    input_tokens, output_tokens = assert_succeeded(outcome, requests, provider_model)
    counts, usage = outcome.batch.request_counts, outcome.batch.usage
    assert counts is not None and usage is not None
    assert (counts.total, counts.completed, counts.failed) == (len(requests), len(requests), 0)
    assert (usage.input_tokens, usage.output_tokens) == (input_tokens, output_tokens)
    assert usage.total_tokens == input_tokens + output_tokens


def cancel(client: openai.OpenAI, batch_id: str) -> Batch:
    """Cancel through the SDK, without retries: a cancel racing finishing shards must not fail."""
    return client.batches.cancel(batch_id)


# --- the emulator's control API ---------------------------------------------------------------------------


def control(cluster: SimulatorCluster, method: str, path: str, body: Any = None) -> Any:
    """One call to the emulator's control server; returns the decoded answer."""
    response = loopback.request(method, f"{cluster.control_url}{path}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def set_faults(cluster: SimulatorCluster, name: str, **faults: Any) -> dict[str, Any]:
    """Switch faults of one emulated provider."""
    return control(cluster, "POST", f"/providers/{name}/faults", faults)


def reset(cluster: SimulatorCluster, *names: str) -> None:
    """Clear jobs, files, log, counters and faults of the named emulated providers."""
    for name in names:
        control(cluster, "POST", f"/providers/{name}/reset")


def emulator_log(cluster: SimulatorCluster, name: str) -> list[dict[str, Any]]:
    """Every API call the emulated provider saw since its last reset, oldest first."""
    return control(cluster, "GET", f"/providers/{name}/log")["data"]


def emulator_stats(cluster: SimulatorCluster, name: str) -> dict[str, Any]:
    """The emulated provider's counters and its batches by status."""
    return control(cluster, "GET", f"/providers/{name}/stats")


def batch_creates(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log entries of provider batches actually created (POST /v1/batches answered 200)."""
    return [e for e in log if e["method"] == "POST" and e["path"] == "/v1/batches" and e["status"] == 200]


def submit_tokens(log: list[dict[str, Any]]) -> list[str]:
    """The gateway's submit token of every provider batch created, in creation order."""
    return [e["detail"]["metadata"]["batchgw_submit_token"] for e in batch_creates(log)]


def cancel_calls(log: list[dict[str, Any]]) -> set[str]:
    """Provider batch ids the gateway asked to cancel."""
    return {
        e["path"].split("/")[3]
        for e in log
        if e["method"] == "POST" and e["path"].startswith("/v1/batches/") and e["path"].endswith("/cancel")
    }


# --- the gateway's database -------------------------------------------------------------------------------


def sync_engine(gateway: GatewayProcess) -> Engine:
    """A synchronous engine on the gateway's database (dispose it after use)."""
    url = make_url(gateway.database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url)


def query(gateway: GatewayProcess, sql: str, **params: Any) -> list[Any]:
    """Rows of a read (or nothing, for a write) on the gateway's database, in a transaction of its own."""
    engine = sync_engine(gateway)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def shard_tokens(gateway: GatewayProcess, batch_id: str) -> list[str]:
    """The submit tokens of a batch's shards."""
    return sorted(row[0] for row in query(gateway, "SELECT submit_token FROM shards WHERE batch_id = :b", b=batch_id))


def assert_submitted_once(gateway: GatewayProcess, cluster: SimulatorCluster, emulator: str, batch_id: str) -> None:
    """The emulator created exactly one provider batch per shard: no shard was submitted twice."""
    tokens = submit_tokens(emulator_log(cluster, emulator))
    assert len(tokens) == len(set(tokens)), f"a shard was submitted twice: {sorted(tokens)}"
    assert sorted(tokens) == shard_tokens(gateway, batch_id)


# --- worker processes -------------------------------------------------------------------------------------


def worker_process(gateway: GatewayProcess, name: str, **env: str) -> GatewayProcess:
    """A ``batchgw worker`` (not started) on the gateway's database and blobs, logging in its own folder."""
    folder = gateway.data_dir / name
    folder.mkdir()
    blobs = str(gateway.data_dir / "blobs")
    return GatewayProcess(
        data_dir=folder,
        database_url=gateway.database_url,
        port=gateway.port,
        extra_env={**gateway.extra_env, "BATCHGW_BLOB_DIR": blobs, **env},
    )


def worker_killed_at(api: GatewayProcess, env: dict[str, str], point: str, lease_s: float = 3.0) -> GatewayProcess:
    """Run a worker beside ``api`` that dies by SIGKILL at crash point ``point``, then start the worker that takes
    over once its lease (``lease_s``) runs out; the caller stops that one."""
    lease = {"BATCHGW_WORKER__LEASE_S": str(lease_s)}
    dying = GatewayProcess(api.data_dir, api.database_url, api.port, {**env, **lease, "BATCHGW_CRASH_AT": point})
    dying.start("worker", wait_ready=False)
    assert dying.process is not None and dying.process.wait(timeout=60) == -signal.SIGKILL
    survivor = GatewayProcess(api.data_dir, api.database_url, api.port, {**env, **lease})
    survivor.start("worker", wait_ready=False)
    return survivor


def api_without_worker(
    gateway_factory: Any,
    simulator: SimulatorCluster,
    providers_dir: Path,
    database_kind: str,
    providers: dict[str, dict[str, Any]],
    **env: str,
) -> GatewayProcess:
    """A ``batchgw serve --no-worker`` on PostgreSQL, for tests that start several workers of their own.

    Skips the test on SQLite: several worker processes on one database need PostgreSQL.
    """
    if database_kind != "postgresql":
        pytest.skip("several workers on one database need PostgreSQL")
    full_env = {**simulated_provider_env(simulator, providers_dir, providers), **env}
    return gateway_factory(full_env).start("serve", "--no-worker")  # type: ignore[no-any-return]


# --- two providers selling one model at different prices (routing, failover, spend) ------------------------

CHEAP = {"batch": (0.075, 0.30), "sync": (0.15, 0.60)}
PRICEY = {"batch": (1.25, 5.00), "sync": (2.50, 10.00)}
ROUTING_ENV = {
    "BATCHGW_ROUTING__SUBMIT_RETRY_BASE_S": "0.2",
    "BATCHGW_ROUTING__CIRCUIT_FAILURE_THRESHOLD": "2",
    "BATCHGW_ROUTING__CIRCUIT_COOLDOWN_S": "600",
    "BATCHGW_ROUTING__PROVIDER_DOWN_FAILOVER_S": "2",
}


def write_catalog(folder: Path, prices: dict[str, dict[str, tuple[float, float]]], model: str = "gpt-4o-mini") -> Path:
    """A catalog in which each named provider sells ``model`` at its sync and batch prices."""
    lines = ["schema_version = 1", "", f'[models."{model}"]', ""]
    for provider, rates in prices.items():
        lines += [
            f'[[models."{model}".offers]]',
            f'provider = "{provider}"',
            f'provider_model = "{model}"',
            'modes = ["batch", "sync"]',
            f"input_per_mtok = {rates['sync'][0]}",
            f"output_per_mtok = {rates['sync'][1]}",
            f"batch_input_per_mtok = {rates['batch'][0]}",
            f"batch_output_per_mtok = {rates['batch'][1]}",
            'source = "test prices"',
            "as_of = 2026-12-01",
            "",
        ]
    path = folder / "catalog.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_gateway(
    factory: Any,
    cluster: SimulatorCluster,
    folder: Path,
    *,
    cheap: str = "steady",
    pricey: str = "fast",
    limits: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """A gateway with providers ``cheap`` and ``pricey`` on two emulators, both serving gpt-4o-mini."""
    providers = {
        "cheap": {"emulator": cheap, "models": {"gpt-4o-mini": "gpt-4o-mini"}, "limits": limits or {}},
        "pricey": {"emulator": pricey, "models": {"gpt-4o-mini": "gpt-4o-mini"}, "limits": limits or {}},
    }
    catalog = write_catalog(folder, {"cheap": CHEAP, "pricey": PRICEY})
    gateway_env = (
        simulated_provider_env(cluster, folder, providers) | ROUTING_ENV | {"BATCHGW_CATALOG__FILE": str(catalog)}
    )
    return factory(gateway_env | (env or {})).start()  # type: ignore[no-any-return]


def admin(gateway: GatewayProcess, path: str) -> Any:
    """GET an admin endpoint of the gateway; returns the decoded answer."""
    response = loopback.get(
        f"{gateway.base_url}/admin{path}", headers={"Authorization": "Bearer test-admin-key"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def expected_cost(outcome: Outcome, rates: dict[str, tuple[float, float]]) -> float:
    """Cost of the output lines at the batch rate of the provider each line names."""
    total = 0.0
    for line in outcome.output.values():
        usage = line["response"]["body"]["usage"]
        rate_in, rate_out = rates[line["provider"]]
        total += (usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out) / 1_000_000
    return total


BATCH_RATES = {"cheap": CHEAP["batch"], "pricey": PRICEY["batch"]}


def unbounded_requests(count: int) -> list[dict[str, Any]]:
    """Chat lines without max_tokens: estimated at the default output, so a rambling model overruns."""
    lines = [chat_request(f"req-{i:04d}", f"label item {i}") for i in range(count)]
    for line in lines:
        del line["body"]["max_tokens"]
    return lines


def create_batch(client: openai.OpenAI, requests: list[dict[str, Any]], metadata: dict[str, str]) -> str:
    """Upload the lines and create a chat batch with ``metadata``; returns its id."""
    content = "".join(json.dumps(r) + "\n" for r in requests).encode()
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    return batch.id


# --- frozen workers -------------------------------------------------------------------------------------


def process_state(worker: GatewayProcess) -> str:
    """The kernel's one-letter state of the worker process (``T`` when stopped)."""
    assert worker.process is not None
    stat = Path(f"/proc/{worker.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def wait_frozen(worker: GatewayProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while process_state(worker) != "T":
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        assert time.monotonic() < deadline, f"the worker never reached its freeze point:\n{worker.log()}"
        time.sleep(0.05)


# --- service tiers --------------------------------------------------------------------------------------


def run_tiered(
    client: openai.OpenAI,
    model: str,
    prefix: str,
    count: int,
    window: str = "24h",
    policy: str = "deadline",
    **metadata: str,
) -> Batch:
    """A chat batch of ``count`` requests with routing hints in its metadata, waited for to its end."""
    lines = "".join(json.dumps(r) + "\n" for r in chat_requests(count, model=model, prefix=prefix))
    file = client.files.create(file=("input.jsonl", lines.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window=window,  # type: ignore[arg-type]
        metadata={"policy": policy, **metadata},
    )
    return wait_for(client, batch.id, timeout=120)


def answer_tokens(lines: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(input, output) tokens the answers of these output lines report."""
    usage = [line["response"]["body"]["usage"] for line in lines]
    return sum(u["prompt_tokens"] for u in usage), sum(u["completion_tokens"] for u in usage)


def priced(counts: tuple[int, int], rates: tuple[float, float]) -> float:
    """USD of (input, output) tokens at (input, output) USD per million."""
    return (counts[0] * rates[0] + counts[1] * rates[1]) / 1e6


def ledger_cost(gateway: GatewayProcess, batch_id: str) -> tuple[float, set[str]]:
    """The batch's cost in the ledger, and the modes (batch, sync, flex, priority) of its rows."""
    rows = query(gateway, "SELECT cost_usd, mode FROM ledger WHERE batch_id = :b", b=batch_id)
    return sum(cost for cost, _ in rows), {mode for _, mode in rows}
