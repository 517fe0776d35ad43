"""Synchronous fan-out throughput and pacing, through the gateway and for the limiter alone.

Run ``python -m tests.bench.bench_fanout`` (``--database-url postgresql://...`` to run on PostgreSQL: a
database is created there for the run and dropped after; the default is SQLite in a temporary folder).

Through the gateway: an emulated OpenAI-compatible provider answering at once runs in a process of its
own (``batchgw simulate``); the API runs as ``batchgw serve --no-worker`` and the engine as one ``batchgw
worker``. One provider of kind ``openai_sync`` is configured twice, with a ``requests_per_minute`` above
what one process can send (``--high``) and one below it (``--low``); a batch of chat requests goes to
each in turn. From the emulator's own request log it prints, side by side, the requests per minute
reached (over the whole run and over its middle 80%), the most requests seen in any one-second window
against the limit's bound (``ceil(rpm / 60)``, give or take one), and the CPU time the worker and the
emulator spent per request (the figure that does not depend on what else the machine runs).

The limiter alone: callers take permits from the provider limiter with nothing else to do, on this
process's timeline and (on PostgreSQL) on the shared one, at the same two limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from gateway.db.engine import create_engine as create_async_engine
from gateway.providers.config import ProviderLimits
from gateway.routing.limits import LocalTimeline, PacedLimiter, SharedTimeline
from gateway.settings import WorkerSettings, async_database_url
from tests.bench import emulator_process, fresh_database
from tests.conftest import GatewayProcess, free_port
from tests.engine import CHAT, worker_process

EMULATOR = "bench"
TARGET_RPM = 30_000


@dataclass
class Figures:
    """What one run shows."""

    label: str
    limit_rpm: int
    requests: int
    seconds: float
    rpm: float
    steady_rpm: float
    busiest_second: int
    worker_cpu_ms: float | None = None
    emulator_cpu_ms: float | None = None

    @property
    def bound(self) -> int:
        return math.ceil(self.limit_rpm / 60)


def busiest(stamps: list[float], window: float = 1.0) -> int:
    """The most events in any window of ``window`` seconds (``stamps`` sorted)."""
    most, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamps[first] <= stamp - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def figures(label: str, limit_rpm: int, stamps: list[float]) -> Figures:
    stamps = sorted(stamps)
    seconds = stamps[-1] - stamps[0]
    cut = len(stamps) // 10
    middle = stamps[cut : len(stamps) - cut]
    steady = (len(middle) - 1) / (middle[-1] - middle[0]) * 60 if len(middle) > 1 else 0.0
    rpm = (len(stamps) - 1) / seconds * 60 if seconds > 0 else 0.0
    return Figures(label, limit_rpm, len(stamps), seconds, rpm, steady, busiest(stamps))


# --- through the gateway ------------------------------------------------------------------------------------


def provider_file(path: Path, base_url: str, rpm: int, concurrency: int) -> None:
    """A gateway configuration with one synchronous provider on the emulator."""
    path.write_text(
        "\n".join(
            [
                "[providers.paced]",
                'kind = "openai_sync"',
                f'base_url = "{base_url}"',
                'models = { "gpt-4o-mini" = "gpt-4o-mini" }',
                "[providers.paced.limits]",
                f"requests_per_minute = {rpm}",
                f"max_concurrency = {concurrency}",
                "",
            ]
        )
    )


def write_input(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Question {i}: what is {i % 97} times {i % 89}?"}],
                "max_tokens": 16,
            }
            out.write(json.dumps({"custom_id": f"req-{i:07d}", "method": "POST", "url": CHAT, "body": body}) + "\n")


def through_gateway(label: str, rpm: int, count: int, concurrency: int, workdir: Path, database_url: str) -> Figures:
    """One batch of ``count`` requests through a fresh gateway (API + one worker) at a limit of ``rpm``."""
    run = workdir / label
    run.mkdir()
    with emulator_process(run, EMULATOR, ["gpt-4o-mini"]) as emulator:
        base_url, control_url = emulator.base_url, emulator.control_url
        emulator_proc = psutil.Process(emulator.pid)
        provider_file(run / "providers.toml", base_url, rpm, concurrency)
        defaults = WorkerSettings()
        env = {
            "BATCHGW_CONFIG_FILE": str(run / "providers.toml"),
            "BATCHGW_WORKER__POLL_INTERVAL_S": str(defaults.poll_interval_s),
        }
        api = GatewayProcess(data_dir=run, database_url=database_url, port=free_port(), extra_env=env)
        worker: GatewayProcess | None = None
        try:
            api.start("serve", "--no-worker")
            client = api.client(api.create_key(f"bench{rpm}"), timeout=600)
            write_input(run / "input.jsonl", count)
            with (run / "input.jsonl").open("rb") as handle:
                file = client.files.create(file=("input.jsonl", handle), purpose="batch")
            worker = worker_process(api, "worker").start("worker")
            assert worker.process is not None
            time.sleep(3.0)  # the worker's start-up (imports, migrations) is not fan-out time
            worker_proc = psutil.Process(worker.process.pid)
            worker_cpu, emulator_cpu = _cpu(worker_proc), _cpu(emulator_proc)
            batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.5)
                batch = client.batches.retrieve(batch.id)
            worker_cpu, emulator_cpu = _cpu(worker_proc) - worker_cpu, _cpu(emulator_proc) - emulator_cpu
            if batch.status != "completed":
                raise RuntimeError(f"the batch ended {batch.status}: {batch.errors}\n{worker.log()[-4000:]}")
            log = httpx.get(f"{control_url}/providers/{EMULATOR}/log", timeout=60).json()["data"]
        finally:
            for process in (worker, api):
                if process is not None:
                    process.stop()
    stamps = [entry["received_at"] for entry in log if entry["path"] == CHAT and entry["status"] == 200]
    if len(stamps) != count:
        raise RuntimeError(f"the emulator answered {len(stamps)} requests for {count}")
    result = figures(label, rpm, stamps)
    result.worker_cpu_ms = worker_cpu / count * 1000
    result.emulator_cpu_ms = emulator_cpu / count * 1000
    return result


def _cpu(process: psutil.Process) -> float:
    """CPU seconds a process (and its children) used so far."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


# --- the limiter alone --------------------------------------------------------------------------------------


async def limiter_alone(label: str, limiter: PacedLimiter, rpm: int, seconds: float, callers: int) -> Figures:
    """Callers taking permits one after another for ``seconds``."""
    stamps: list[float] = []

    async def caller() -> None:
        while True:
            await limiter.acquire(20)
            stamps.append(time.monotonic())

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return figures(label, rpm, stamps)


async def limiters_alone(high: int, low: int, database_url: str | None) -> list[Figures]:
    results = []
    for rpm in (high, low):
        limits = ProviderLimits(requests_per_minute=rpm)
        local = PacedLimiter("bench", limits, LocalTimeline())
        results.append(await limiter_alone(f"in-process, {rpm:,} rpm", local, rpm, 5.0, 64))
    if database_url is not None:
        engine = create_async_engine(async_database_url(database_url))
        try:
            for rpm in (high, low):
                limits = ProviderLimits(requests_per_minute=rpm)
                shared = PacedLimiter(f"bench-{rpm}", limits, SharedTimeline(engine, f"bench-{rpm}"))
                results.append(await limiter_alone(f"shared (PostgreSQL), {rpm:,} rpm", shared, rpm, 5.0, 64))
        finally:
            await engine.dispose()
    return results


# --- databases and the report -------------------------------------------------------------------------------


def report(title: str, rows: list[Figures], per_request_cpu: bool) -> None:
    print(title)
    header = f"  {'run':<34} {'limit rpm':>10} {'requests':>9} {'seconds':>8} {'rpm':>9} {'middle rpm':>10}"
    header += f" {'busiest 1 s':>11} {'bound':>6}"
    if per_request_cpu:
        header += f" {'worker CPU/req':>14} {'emulator CPU/req':>16}"
    print(header)
    for row in rows:
        line = f"  {row.label:<34} {row.limit_rpm:>10,} {row.requests:>9,} {row.seconds:>8.1f} {row.rpm:>9,.0f}"
        line += f" {row.steady_rpm:>10,.0f} {row.busiest_second:>11,} {row.bound:>6,}"
        if per_request_cpu and row.worker_cpu_ms is not None and row.emulator_cpu_ms is not None:
            line += f" {row.worker_cpu_ms:>11.2f} ms {row.emulator_cpu_ms:>13.2f} ms"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--high", type=int, default=120_000, help="a limit above what one process sends (rpm)")
    parser.add_argument("--low", type=int, default=12_000, help="a limit below it (rpm)")
    parser.add_argument("--requests", type=int, default=9_000, help="requests at the high limit (log holds 10,000)")
    parser.add_argument("--low-requests", type=int, default=3_000, help="requests at the low limit")
    # httpcore's pool spends more CPU per request the more connections it holds: 8 goes fastest here.
    parser.add_argument("--concurrency", type=int, default=8, help="the provider's max_concurrency (default 8)")
    parser.add_argument("--database-url", help="PostgreSQL to run on (default: SQLite in a temporary folder)")
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as folder:
        workdir = Path(folder)
        with fresh_database(args.database_url, workdir) as (database_url, shared_url):
            kind = "PostgreSQL (shared limiter)" if shared_url else "SQLite (in-process limiter)"
            print(f"{cpus} CPUs, load average {load:.1f} at start; gateway on {kind}")
            runs = [
                through_gateway("above capacity", args.high, args.requests, args.concurrency, workdir, database_url),
                through_gateway("below capacity", args.low, args.low_requests, args.concurrency, workdir, database_url),
            ]
            alone = asyncio.run(limiters_alone(args.high * 10, args.low, shared_url))
    report("through the gateway (one worker process, emulator answering at once):", runs, per_request_cpu=True)
    report("the limiter alone (64 callers, 5 s each):", alone, per_request_cpu=False)
    reached = runs[0].steady_rpm >= TARGET_RPM
    within = all(row.busiest_second <= row.bound + 1 for row in (runs[1], *alone[1::2]))
    print(f"fan-out at {TARGET_RPM:,} rpm or more from one process: {'yes' if reached else 'NO'}; ", end="")
    print(f"below-capacity runs within ceil(rpm/60) + 1 in every second: {'yes' if within else 'NO'}")
    return 0 if reached and within else 1


if __name__ == "__main__":
    sys.exit(main())
