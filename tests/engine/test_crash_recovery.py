"""Workers killed with SIGKILL at every crash point, and while polling: the batch still ends exact, submitted once.

The API runs as ``serve --no-worker``; workers are separate ``batchgw worker`` processes on the same
database and blob folder. The first worker of a test dies at ``BATCHGW_CRASH_AT``; a second one, started
without it, takes over once the short lease (3 s) has expired.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.crashpoints import POINTS
from gateway.simulator import SimulatorCluster
from gateway.storage.local import COMPOSITE_MARK
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import (
    Outcome,
    assert_all_succeeded,
    assert_submitted_once,
    batch_creates,
    chat_requests,
    collect,
    emulator_log,
    emulator_stats,
    query,
    reset,
    submit,
    wait_for,
    worker_process,
)

REQUESTS = 20
SHARDS = 4
PROVIDERS: dict[str, dict[str, Any]] = {
    "quick": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 5}},
    "slowp": {"emulator": "slow", "models": {"slow": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 5}},
}
LEASE_ENV = {"BATCHGW_WORKER__LEASE_S": "3"}
BATCH_RATES = (0.075, 0.30)
CATALOG = "schema_version = 1\n" + "".join(
    f"""
[models."{model}"]
[[models."{model}".offers]]
provider = "{provider}"
provider_model = "gpt-4o-mini"
modes = ["batch"]
input_per_mtok = 0.15
output_per_mtok = 0.60
batch_input_per_mtok = {BATCH_RATES[0]}
batch_output_per_mtok = {BATCH_RATES[1]}
source = "test prices"
as_of = 2026-12-01
"""
    for provider, spec in PROVIDERS.items()
    for model in spec["models"]
)

StartWorker = Callable[..., GatewayProcess]


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    """The API only: every batch stage runs in the separate worker processes."""
    folder = tmp_path_factory.mktemp("providers")
    (folder / "catalog.toml").write_text(CATALOG, encoding="utf-8")
    env = {**simulated_provider_env(simulator, folder, PROVIDERS), **LEASE_ENV}
    env["BATCHGW_CATALOG__FILE"] = str(folder / "catalog.toml")
    return gateway_factory(env).start("serve", "--no-worker")


class Workers:
    """``batchgw worker`` processes on the gateway's database and blobs."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.running: list[GatewayProcess] = []
        self.count = 0

    def start(self, **env: str) -> GatewayProcess:
        self.count += 1
        worker = worker_process(self.gateway, f"worker-{self.count}", **env)
        self.running.append(worker)
        return worker.start("worker")

    def kill_all(self) -> None:
        for worker in self.running:
            worker.kill()
        self.running.clear()


@pytest.fixture(scope="module")
def workers(gateway: GatewayProcess) -> Iterator[Workers]:
    started = Workers(gateway)
    yield started
    started.kill_all()


@pytest.fixture
def start_worker(workers: Workers) -> Iterator[StartWorker]:
    """Start workers for one test; none outlives it, so the next test's crash point is reached."""
    yield workers.start
    workers.kill_all()


@pytest.fixture(autouse=True)
def fresh_emulators(simulator: SimulatorCluster) -> None:
    reset(simulator, *simulator.names())


def wait_killed(worker: GatewayProcess, timeout: float = 60.0) -> None:
    """The worker died of SIGKILL (at its crash point)."""
    assert worker.process is not None
    try:
        code = worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker never reached its crash point:\n{worker.log()}") from None
    assert code == -signal.SIGKILL, f"worker exited with {code}:\n{worker.log()}"


@dataclass
class CrashRun:
    outcome: Outcome
    requests: list[dict[str, Any]]


def crash_and_recover(
    point: str, client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, start_worker: StartWorker
) -> CrashRun:
    """Run a batch on a worker that dies at ``point``, then finish it with a fresh worker."""
    assert point in POINTS
    requests = chat_requests(REQUESTS, prefix=point.replace(".", "-"))
    first = start_worker(BATCHGW_CRASH_AT=point)
    batch = submit(client, requests)
    wait_killed(first)
    assert client.batches.retrieve(batch.id).status not in ("completed", "failed", "expired", "cancelled")
    second = start_worker()
    batch = wait_for(client, batch.id, timeout=60)
    assert batch.status == "completed", second.log()
    return CrashRun(collect(client, batch), requests)


def assert_exact_once(run: CrashRun, gateway: GatewayProcess, simulator: SimulatorCluster, emulator: str) -> None:
    """Exact output, one provider batch per shard, each submit token used once, each shard paid once."""
    assert_all_succeeded(run.outcome, run.requests, "gpt-4o-mini")
    assert len(batch_creates(emulator_log(simulator, emulator))) == SHARDS
    assert_submitted_once(gateway, simulator, emulator, run.outcome.batch.id)
    rows = query(gateway, "SELECT shard_id, requests, cost_usd FROM ledger WHERE batch_id = :b", b=run.outcome.batch.id)
    assert len(rows) == SHARDS == len({row[0] for row in rows}), rows
    assert sum(row[1] for row in rows) == REQUESTS
    usage = [line["response"]["body"]["usage"] for line in run.outcome.output.values()]
    expected = sum(u["prompt_tokens"] * BATCH_RATES[0] + u["completion_tokens"] * BATCH_RATES[1] for u in usage) / 1e6
    assert sum(row[2] for row in rows) == pytest.approx(expected, rel=1e-9)
    metadata = run.outcome.batch.metadata or {}
    assert float(metadata["gateway_cost_usd"]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("point", ["submit.after_provider_create", "poll.after_status", "collect.after_split"])
def test_crash_at_point_recovers_exactly_once(
    point: str, client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, start_worker: StartWorker
) -> None:
    run = crash_and_recover(point, client, gateway, simulator, start_worker)
    assert_exact_once(run, gateway, simulator, "fast")


@pytest.fixture(scope="module")
def merge_crash(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, workers: Workers
) -> CrashRun:
    """One run crashing in the merge, shared by the two tests below."""
    reset(simulator, "fast")
    try:
        run = crash_and_recover("merge.after_files_written", client, gateway, simulator, workers.start)
        assert_exact_once(run, gateway, simulator, "fast")
    finally:
        workers.kill_all()
    return run


def test_crash_in_merge_recovers_exactly_once(merge_crash: CrashRun) -> None:
    assert merge_crash.outcome.batch.output_file_id is not None


def test_blobs_a_crashed_merge_left_are_collected(
    merge_crash: CrashRun, client: openai.OpenAI, gateway: GatewayProcess, start_worker: StartWorker
) -> None:
    """The killed merge's files carry its fencing token and no row names them: the blob collector removes
    them, and the finished batch's shard blobs, but nothing a row names."""
    blobs = gateway.data_dir / "blobs"

    def stored_blob(path: Path) -> Path | None:
        """The blob a path of the folder is or belongs to: a file, or a composite (a joined file: a folder of
        links) with what it holds."""
        if (path / COMPOSITE_MARK).is_file():
            return path
        if (path.parent / COMPOSITE_MARK).is_file():
            return path.parent
        return path if path.is_file() else None

    def unnamed() -> tuple[set[str], set[str]]:
        referenced = {row[0] for row in query(gateway, "SELECT storage_key FROM files WHERE NOT deleted")}
        stored = {
            str(blob.relative_to(blobs))
            for folder in ("files", "outputs", "shards")
            if (blobs / folder).exists()
            for path in (blobs / folder).rglob("*")
            if (blob := stored_blob(path)) is not None
        }
        # A live file's requests' figures (kept beside it for routing) go with the file, not before.
        return stored - referenced - {f"{key}.figures" for key in referenced}, referenced

    left, referenced = unnamed()
    assert any(key.startswith("outputs/") for key in left), "the crashed merge left its own output blob"
    start_worker(BATCHGW_WORKER__BLOB_GC_INTERVAL_S="0.5", BATCHGW_WORKER__BLOB_GC_GRACE_S="1")
    deadline = time.monotonic() + 30
    while (left := unnamed()[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"blobs no row names: {sorted(left)}"
    assert all(stored_blob(blobs / key) for key in referenced), "a blob a file names was removed"
    assert client.files.content(str(merge_crash.outcome.batch.output_file_id)).text


def test_external_sigkill_while_shards_are_polling(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster, start_worker: StartWorker
) -> None:
    requests = chat_requests(REQUESTS, model="slow", prefix="killed")
    first = start_worker()
    batch = submit(client, requests)
    deadline = time.monotonic() + 30
    while True:
        log = emulator_log(simulator, "slow")
        polled = any(e["method"] == "GET" and e["path"].startswith("/v1/batches/") for e in log)
        if len(batch_creates(log)) == SHARDS and polled:
            break
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.1)
    first.kill()
    active = emulator_stats(simulator, "slow")["batches"]
    assert active.get("completed", 0) < SHARDS, f"the provider batches finished before the kill: {active}"
    start_worker()
    batch = wait_for(client, batch.id, timeout=60)
    run = CrashRun(collect(client, batch), requests)
    assert_exact_once(run, gateway, simulator, "slow")
