"""End-to-end engine throughput: one large batch from creation to a downloadable output file.

Run ``python -m tests.bench.bench_engine [--requests N]`` (default 100,000). It starts an emulated
OpenAI-protocol provider in this process (answering at once: no processing delay), the API as
``batchgw serve --no-worker`` and the engine as a separate ``batchgw worker``, both on a temporary
data folder and SQLite (``--database-url`` for another database), with default settings and the
provider's default limits (50,000 requests per provider batch, so 100,000 requests make 2 shards).
``--env NAME=VALUE`` changes a setting of both processes.

It uploads an N-request chat file, creates the batch, polls until it is completed, downloads the
output file and checks it has one line per request. It prints the time from batch creation to the
output file being downloadable, split into phases from the worker's log and the emulator's own
timestamps (validation, routing, submission, provider processing, collection, merge), and the worker
process's peak RSS, sampled every 20 ms and as the kernel's high-water mark (VmHWM). MB means 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.settings import WorkerSettings
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.bench import RssSampler, high_water_mark
from tests.bench.job_stages import log_events
from tests.conftest import GatewayProcess, free_port, simulated_provider_env
from tests.engine import CHAT, worker_process

MB = 1_000_000
TARGET_S = 20.0
TARGET_RSS_MB = 300.0
EMULATOR = "bench"


class JobWatcher(threading.Thread):
    """Records when the emulator's batches reach a terminal status (its own status times are whole seconds)."""

    def __init__(self, cluster: SimulatorCluster) -> None:
        super().__init__(daemon=True)
        self.state = cluster.state(EMULATOR)
        self.finished: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            for job_id, job in list(self.state.jobs.items()):
                self.started.setdefault(job_id, now)
                if job.status in ("completed", "failed", "expired", "cancelled"):
                    self.finished.setdefault(job_id, now)
            self._halt.wait(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Figures:
    requests: int
    shards: int
    total_s: float
    download_s: float
    upload_s: float
    input_mb: float
    output_mb: float
    peak_rss: int
    hwm: int | None
    provider_s: float = 0.0
    milestones: list[tuple[str, float]] = field(default_factory=list)


def write_input(path: Path, count: int) -> int:
    """An N-line chat batch input file; returns its size."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You answer in one short sentence."},
                    {"role": "user", "content": f"Question {i}: what is {i % 97} times {i % 89}?"},
                ],
                "max_tokens": 32,
            }
            out.write(json.dumps({"custom_id": f"req-{i:07d}", "method": "POST", "url": CHAT, "body": body}) + "\n")
    return path.stat().st_size


def milestones(
    created: float, seen_done: float, log: str, watcher: JobWatcher, calls: list[tuple[float, str, str]]
) -> list[tuple[str, float]]:
    """Seconds from batch creation to each milestone of the run, in order.

    ``calls`` are the emulator's (end time, method, path) of every API call it answered.
    """
    events = log_events(log)
    status_paths = {"/v1/batches"}  # the list call that answers the polls of several batches at once

    def status_read_after(job: str, done: float) -> float:
        paths = status_paths | {f"/v1/batches/{job}"}
        reads = [t for t, method, path in calls if method == "GET" and path in paths]
        # The watcher samples the emulator, so it may note the end a little after the poll that saw it.
        return min((t for t in reads if t >= done), default=max(reads))

    seen_by_poll = max(status_read_after(job, done) for job, done in watcher.finished.items())
    downloaded = max(t for t, method, path in calls if method == "GET" and path.endswith("/content"))

    def last(pattern: str) -> float:
        times = [t for t, _, message in events if re.search(pattern, message)]
        if not times:
            raise RuntimeError(f"no worker log line matches {pattern!r}")
        return max(times) - created

    return [
        ("validated", last(r"validated")),
        ("routed (shard files written)", last(r"routed into")),
        ("last shard submitted (upload + create)", last(r"submitted to")),
        ("last provider batch done (emulator)", max(watcher.finished.values()) - created),
        ("status poll sees it done", seen_by_poll - created),
        ("results downloaded from the provider", downloaded - created),
        ("last shard collected (join on custom_id)", last(r"collected:")),
        ("merged (output file written)", last(r"batch \S+ completed")),
        ("client sees completed", seen_done - created),
    ]


def measure(count: int, workdir: Path, database_url: str | None, extra_env: dict[str, str]) -> Figures:
    cluster = SimulatorCluster([ProviderSpec(name=EMULATOR, models=["gpt-4o-mini"])], control_port=None)
    cluster.start()
    api = worker = None
    try:
        env = simulated_provider_env(
            cluster, workdir, {"bench": {"emulator": EMULATOR, "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
        )
        # Production settings: the tests' fast polling would flatter the figures and busy the CPU.
        defaults = WorkerSettings()
        env |= {
            "BATCHGW_WORKER__POLL_INTERVAL_S": str(defaults.poll_interval_s),
            "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": str(defaults.provider_poll_min_s),
            "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": str(defaults.provider_poll_max_s),
        }
        env |= extra_env
        database_url = database_url or f"sqlite:///{workdir / 'gateway.db'}"
        api = GatewayProcess(data_dir=workdir, database_url=database_url, port=free_port(), extra_env=env)
        api.start("serve", "--no-worker")
        client = api.client(api.create_key("bench"), timeout=600)
        input_path = workdir / "input.jsonl"
        size = write_input(input_path, count)
        started = time.monotonic()
        with input_path.open("rb") as handle:
            file = client.files.create(file=("input.jsonl", handle), purpose="batch")
        upload_s = time.monotonic() - started

        worker = worker_process(api, "worker").start("worker")
        assert worker.process is not None
        time.sleep(3.0)  # let the worker finish importing and migrating: its start-up is not the engine's time
        sampler, watcher = RssSampler(worker.process.pid, interval=0.02), JobWatcher(cluster)
        sampler.start()
        watcher.start()
        created = time.time()
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
            batch = client.batches.retrieve(batch.id)
        seen_done = time.time()
        if batch.status != "completed" or batch.output_file_id is None:
            raise RuntimeError(f"the batch ended {batch.status}: {batch.errors}\n{worker.log()[-4000:]}")
        started = time.monotonic()
        output = client.files.content(batch.output_file_id).content
        download_s = time.monotonic() - started
        lines = output.count(b"\n")
        if lines != count:
            raise RuntimeError(f"the output file has {lines} lines for {count} requests")
        time.sleep(0.2)
        hwm = high_water_mark(worker.process.pid)
        calls = [(e.timestamp, e.method, e.path) for e in cluster.state(EMULATOR).log]
        peak = sampler.stop()
        watcher.stop()
        return Figures(
            requests=count,
            shards=len(watcher.finished),
            total_s=seen_done - created,
            download_s=download_s,
            upload_s=upload_s,
            input_mb=size / MB,
            output_mb=len(output) / MB,
            peak_rss=peak,
            hwm=hwm,
            provider_s=max(watcher.finished[job] - watcher.started[job] for job in watcher.finished),
            milestones=milestones(created, seen_done, worker.log(), watcher, calls),
        )
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop()
        cluster.stop()


def report(figures: Figures) -> bool:
    ok_time, ok_rss = figures.total_s < TARGET_S, figures.peak_rss / MB < TARGET_RSS_MB
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"requests                 {figures.requests:,} in {figures.shards} provider batches, {cpus} CPUs")
    print(f"input file               {figures.input_mb:.1f} MB, uploaded in {figures.upload_s:.2f} s (not counted)")
    verdict = "ok" if ok_time else "MISSED"
    print(f"creation -> completed    {figures.total_s:.2f} s  (target < {TARGET_S:.0f} s: {verdict})")
    previous = 0.0
    for name, at in figures.milestones:
        print(f"  t+{at:6.2f} s  {name:<42} (+{at - previous:5.2f} s)")
        previous = at
    print(f"provider processing      {figures.provider_s:.2f} s per provider batch (longest, seen by the emulator)")
    print(f"output download          {figures.output_mb:.1f} MB in {figures.download_s:.2f} s")
    hwm = f"{figures.hwm / MB:.0f} MB" if figures.hwm is not None else "n/a"
    verdict = "ok" if ok_rss else "MISSED"
    print(f"worker peak RSS          {figures.peak_rss / MB:.0f} MB sampled, VmHWM {hwm}", end="")
    print(f"  (target < {TARGET_RSS_MB:.0f} MB: {verdict})")
    return ok_time and ok_rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000, help="requests in the batch (default 100,000)")
    parser.add_argument("--database-url", help="database of the gateway (default: SQLite in the temporary folder)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra BATCHGW_* setting")
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as folder:
        figures = measure(args.requests, Path(folder), args.database_url, extra_env)
    return 0 if report(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
