"""Multi-node chaos run: the gateway scaled out, with its processes killed and frozen at random.

Run ``python -m tests.bench.chaos_multinode [--requests 300000]``. Two API processes (``batchgw serve
--no-worker``) and three workers (``batchgw worker``), each with its own empty data folder, share only
PostgreSQL (``BATCHGW_TEST_DATABASE_URL``, default the local test server) and an S3 server (moto's
standalone server, started here). One job of ``--requests`` chat requests goes in through the first API
with the official ``openai`` SDK. While it runs, every few seconds a random worker is SIGKILLed (and
started again) or SIGSTOPped past its lease (and woken later); once a third of the job is answered, the
first API is SIGKILLed for good and the client carries on against the second.

Beside it, a second job of 2,400 requests runs on a synchronous provider limited to 1,200 requests per
minute, fanned out by the same workers.

At the end it checks, and prints: every custom_id of both jobs exactly once across their output and error
files, all succeeded; each provider batch created once per shard (or, when a frozen worker created one
after losing its lease, cancelled and billed); the batch provider's invoice equal to the ledger; the
synchronous provider's requests (by arrival time at its emulator, a process of its own) never above
1,200 in any 60 seconds (+5%) across all workers together (the busiest second is printed too); and,
after a final ``batchgw gc``, no blob in the bucket but the input and the result files. It exits
non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from openai.types import Batch

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests import conftest
from tests.bench import EmulatorProcess, emulator_process
from tests.conftest import FreshDatabase, GatewayProcess, S3Server, free_port, start_s3_server

PROVIDER = "bulk"
PACED = "paced"
MODEL = "gpt-4o-mini"
PACED_MODEL = "llama-3.3-70b"
PER_SHARD = 20_000
LEASE_S = 5.0
RPM = 1200
"""Requests per minute the synchronous provider allows, across all workers together."""
PACED_REQUESTS = 2400
"""The fan-out job that runs beside the big one: two minutes at the limit."""
RATES = (0.075, 0.30)
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Cast:
    """The processes of the run."""

    apis: list[GatewayProcess] = field(default_factory=list)
    workers: list[GatewayProcess] = field(default_factory=list)
    frozen: set[int] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    kills: int = 0
    freezes: int = 0


def write_requests(path: Path, count: int, model: str) -> None:
    with path.open("w") as out:
        for i in range(count):
            body = {"model": model, "messages": [{"role": "user", "content": f"label item {i}"}], "max_tokens": 16}
            line = {"custom_id": f"r{i:07d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")


def config_file(folder: Path, cluster: SimulatorCluster, paced: EmulatorProcess) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f"""
[providers.{PROVIDER}]
kind = "openai"
base_url = "{cluster.base_url(PROVIDER)}"
models = {{ "{MODEL}" = "{MODEL}" }}
catalog_provider = "openai"

[providers.{PROVIDER}.limits]
max_requests_per_batch = {PER_SHARD}

[providers.{PACED}]
kind = "openai_sync"
base_url = "{paced.base_url}"
models = {{ "{PACED_MODEL}" = "{PACED_MODEL}" }}

[providers.{PACED}.limits]
requests_per_minute = {RPM}
max_requests_per_batch = 600
""",
        encoding="utf-8",
    )
    return path


def process(root: Path, name: str, database_url: str, env: dict[str, str]) -> GatewayProcess:
    folder = root / name
    folder.mkdir()
    return GatewayProcess(data_dir=folder, database_url=database_url, port=free_port(), extra_env=env)


def chaos(cast: Cast, stop: threading.Event, rng: random.Random) -> None:
    """Kill or freeze a random worker every few seconds until told to stop."""
    while not stop.wait(rng.uniform(3, 8)):
        index = rng.randrange(len(cast.workers))
        worker = cast.workers[index]
        if index in cast.frozen or worker.process is None:
            continue
        if rng.random() < 0.5:
            worker.kill()
            cast.kills += 1
            cast.events.append(f"{time.strftime('%H:%M:%S')} SIGKILL worker {index}")
            time.sleep(rng.uniform(0.5, 3))
            worker.start("worker")
        else:
            worker.process.send_signal(signal.SIGSTOP)
            cast.frozen.add(index)
            cast.freezes += 1
            pause = rng.uniform(LEASE_S * 1.5, LEASE_S * 4)
            cast.events.append(f"{time.strftime('%H:%M:%S')} SIGSTOP worker {index} for {pause:.0f}s")

            def wake(index: int = index, worker: GatewayProcess = worker, pause: float = pause) -> None:
                time.sleep(pause)
                if worker.process is not None:
                    worker.process.send_signal(signal.SIGCONT)
                cast.frozen.discard(index)

            threading.Thread(target=wake, daemon=True).start()


@contextmanager
def running(cast: Cast) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in [*cast.workers, *cast.apis]:
            if proc.process is not None and proc.process.poll() is None:
                proc.process.send_signal(signal.SIGCONT)
                proc.stop()


def check(results: dict[str, bool], name: str, ok: bool, detail: str) -> None:
    results[name] = ok
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, value in enumerate(times):
        while value - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def submit(client: openai.OpenAI, path: Path) -> tuple[str, Batch]:
    """Upload a request file and create a batch on it; returns the file id and the batch."""
    with path.open("rb") as handle:
        upload = client.files.create(file=(path.name, handle), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return upload.id, batch


def exactly_once(results: dict[str, bool], client: openai.OpenAI, name: str, job: Batch, total: int) -> None:
    """Every custom_id of the job once across its output and error files, all succeeded."""
    check(results, f"{name} completed", job.status == "completed", job.status)
    seen: dict[str, int] = {}
    succeeded = 0
    for file_id in (job.output_file_id, job.error_file_id):
        if file_id:
            with client.files.with_streaming_response.content(file_id) as response:
                for line in response.iter_lines():
                    if line:
                        item = json.loads(line)
                        seen[item["custom_id"]] = seen.get(item["custom_id"], 0) + 1
                        succeeded += item["error"] is None
    twice = sum(1 for count in seen.values() if count > 1)
    check(
        results,
        f"{name} exactly once",
        len(seen) == total and twice == 0 and succeeded == total,
        f"{len(seen):,} custom_ids, {twice} twice, {succeeded:,} succeeded",
    )


def run(requests: int, seed: int, timeout_s: float) -> int:
    rng = random.Random(seed)
    conftest.PG_URL = os.environ.get("BATCHGW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    results: dict[str, bool] = {}
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        s3: S3Server = start_s3_server()
        stack.callback(s3.process.terminate)
        bucket = s3.new_bucket()
        database = FreshDatabase.create("postgresql", root)
        stack.callback(database.drop)
        specs = [ProviderSpec(name=PROVIDER, models=[MODEL], processing_delay_s=20.0)]
        cluster = stack.enter_context(SimulatorCluster(specs, control_port=0))
        # The paced emulator runs in a process of its own: the arrival times it logs are then not delayed by
        # the batch emulator's work (all emulators of one cluster share one event loop).
        paced_provider = stack.enter_context(emulator_process(root, PACED, [PACED_MODEL]))
        env = {
            **s3.storage_env(bucket),
            "BATCHGW_CONFIG_FILE": str(config_file(root, cluster, paced_provider)),
            "BATCHGW_WORKER__LEASE_S": str(LEASE_S),
            "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": "1",
            "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": "5",
        }
        cast = Cast()
        cast.apis = [process(root, f"api-{n}", database.url, env) for n in range(2)]
        cast.workers = [process(root, f"worker-{n}", database.url, env) for n in range(3)]
        stack.enter_context(running(cast))
        cast.apis[0].cli("db", "upgrade")
        for api in cast.apis:
            api.start("serve", "--no-worker")
        for worker in cast.workers:
            worker.start("worker")
        key = cast.apis[0].create_key("chaos")
        clients = [
            openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=key, max_retries=3, timeout=600) for api in cast.apis
        ]

        big_path, paced_path = root / "requests.jsonl", root / "paced.jsonl"
        write_requests(big_path, requests, MODEL)
        write_requests(paced_path, PACED_REQUESTS, PACED_MODEL)
        print(
            f"{requests:,} requests ({big_path.stat().st_size / 1e6:.0f} MB) on a batch provider and "
            f"{PACED_REQUESTS:,} fanned out at {RPM} rpm; 2 APIs, 3 workers, PostgreSQL + S3"
        )
        started = time.monotonic()
        big_file, batch = submit(clients[0], big_path)
        paced_file, paced = submit(clients[0], paced_path)
        print(f"uploaded and created {batch.id} and {paced.id} in {time.monotonic() - started:.1f}s")

        stop = threading.Event()
        agent = threading.Thread(target=chaos, args=(cast, stop, rng), daemon=True)
        agent.start()
        client, api_killed = clients[0], False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                batch, paced = client.batches.retrieve(batch.id), client.batches.retrieve(paced.id)
            except openai.APIConnectionError:
                client = clients[1]
                continue
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            if not api_killed and done >= requests // 3:
                cast.apis[0].kill()
                api_killed = True
                cast.events.append(f"{time.strftime('%H:%M:%S')} SIGKILL api 0 at {done:,} answered")
                client = clients[1]
            if batch.status in TERMINAL and paced.status in TERMINAL:
                break
            time.sleep(2)
        stop.set()
        agent.join(timeout=60)
        elapsed = time.monotonic() - started
        print(f"jobs {batch.status} / {paced.status} after {elapsed:.0f}s; {cast.kills} kills, {cast.freezes} freezes")
        for event in cast.events:
            print(f"  {event}")

        print("checks:")
        exactly_once(results, client, "big job", batch, requests)
        exactly_once(results, client, "fan-out job", paced, PACED_REQUESTS)

        # Let abandoned provider batches settle before the money is compared.
        admin = {"Authorization": "Bearer test-admin-key"}
        settle_deadline = time.monotonic() + 120
        while True:
            detail = httpx.get(f"{cast.apis[1].base_url}/admin/batches/{batch.id}", headers=admin, timeout=60).json()
            settled = all(a["state"] == "settled" for a in detail.get("abandoned_provider_batches", []))
            if settled or time.monotonic() > settle_deadline:
                break
            time.sleep(2)
        shards = [s for s in detail["shards"] if s["provider_batch_id"]]
        abandoned = detail.get("abandoned_provider_batches", [])
        invoice = httpx.get(f"{cluster.control_url}/providers/{PROVIDER}/invoice", timeout=60).json()
        billed = sum(b["input_tokens"] * RATES[0] + b["output_tokens"] * RATES[1] for b in invoice["batches"]) / 1e6
        check(
            results,
            "provider batches",
            len(invoice["batches"]) == len(shards) + sum(1 for a in abandoned if a["provider_batch_id"]),
            f"{len(invoice['batches'])} created for {len(shards)} shards and {len(abandoned)} abandoned",
        )
        check(
            results,
            "ledger equals invoice",
            abs(float(detail["cost_usd"]) - billed) <= 1e-6 * max(1, len(invoice["batches"])),
            f"ledger ${float(detail['cost_usd']):.6f}, invoice ${billed:.6f}, "
            f"paid twice ${detail['paid_twice_usd']:.6f}",
        )
        paced_log = httpx.get(f"{paced_provider.control_url}/providers/{PACED}/log", timeout=60).json()["data"]
        arrivals = [e.get("received_at") or e["timestamp"] for e in paced_log if e["method"] == "POST"]
        minute, second = max_in_window(arrivals, 60.0), max_in_window(arrivals, 1.0)
        bound = -(-RPM // 60)
        check(
            results,
            "rate limit",
            minute <= RPM * 1.05,
            f"{len(arrivals):,} requests reached {PACED}; at most {minute} in any 60 s (limit {RPM}); "
            f"busiest second {second} (a smooth {RPM} rpm is {bound} a second)",
        )

        for proc in [*cast.workers, cast.apis[1]]:
            if proc.process is not None:
                proc.process.send_signal(signal.SIGCONT)
                proc.stop()
        collected = cast.apis[1].cli("gc", "--grace-s", "0")
        keys = set(s3.keys(bucket))
        named = {f"gw/files/{big_file}", f"gw/files/{paced_file}"}
        results_files = [
            f for f in (batch.output_file_id, batch.error_file_id, paced.output_file_id, paced.error_file_id) if f
        ]
        left = {k for k in keys if not k.startswith("gw/outputs/") and k not in named}
        outputs = {k for k in keys if k.startswith("gw/outputs/")}
        check(
            results,
            "no orphaned blobs",
            not left and len(outputs) == len(results_files),
            f"{len(keys)} objects left ({collected.stdout.strip()}); unexpected: {sorted(left)[:5]}",
        )
    failed = [name for name, ok in results.items() if not ok]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args()
    sys.exit(run(args.requests, args.seed, args.timeout_s))


if __name__ == "__main__":
    main()
