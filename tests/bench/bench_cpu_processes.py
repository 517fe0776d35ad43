"""One ``batchgw serve`` (API and worker in one process) running a large job, with its CPU-heavy steps in up to
two processes of their own (``worker.cpu_processes=2``, the default), in one (``1``) and in threads (``0``), side
by side.

Run ``python -m tests.bench.bench_cpu_processes`` (300,000 requests, 2 rounds; ``--requests``, ``--rounds``).
Each round starts a fresh gateway on SQLite per setting, routed to one OpenAI-protocol emulator answering at
once in a process of its own, and runs the same job through the official ``openai`` client (upload, create,
poll every 20 ms, download) while a second client reads the status of a finished batch every 10 ms. Printed
per run: the job's time, the gateway's CPU seconds (its CPU processes included), the status reads' p50, p99
and longest latency, and the peak RSS of the gateway's process and of its largest child (the API's upload check
process or a CPU process).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil

from tests.bench import EmulatorProcess, cpu_seconds, emulator_process, fresh_database
from tests.bench.bench_engine import write_input
from tests.bench.bench_floor import gateway_env, run_job
from tests.conftest import GatewayProcess, cpu_pool_processes, free_port

MB = 1_000_000
STATUS_EVERY_S = 0.01


@dataclass
class Run:
    setting: int
    job_s: float
    cpu_s: float
    latencies: list[float]
    gateway_rss: int
    cpu_process_rss: int

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000


def one_run(root: Path, emulator: EmulatorProcess, big: Path, big_requests: int, small: Path, setting: int) -> Run:
    folder = Path(tempfile.mkdtemp(dir=root))
    with ExitStack() as stack:
        database_url, _ = stack.enter_context(fresh_database(None, folder))
        env = gateway_env(root, emulator) | {"BATCHGW_WORKER__CPU_PROCESSES": str(setting)}
        gateway = GatewayProcess(data_dir=folder, database_url=database_url, port=free_port(), extra_env=env)
        gateway.start("serve")
        stack.callback(gateway.stop)
        assert gateway.process is not None
        process = psutil.Process(gateway.process.pid)
        key = gateway.create_key("bench")
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, timeout=1800, max_retries=0)
        finished = run_job(client, small).batch_id
        time.sleep(2.0)  # the worker's CPU process has started
        latencies: list[float] = []
        peaks = [0, 0]
        stop = threading.Event()

        def read_status() -> None:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=f"{gateway.base_url}/v1", headers=headers, timeout=60) as http:
                while not stop.is_set():
                    sent = time.monotonic()
                    http.get(f"/batches/{finished}").raise_for_status()
                    latencies.append(time.monotonic() - sent)
                    time.sleep(STATUS_EVERY_S)

        def sample_rss() -> None:
            while not stop.is_set():
                with contextlib.suppress(psutil.Error):
                    peaks[0] = max(peaks[0], process.memory_info().rss)
                    for child in cpu_pool_processes(process.pid):
                        peaks[1] = max(peaks[1], child.memory_info().rss)
                time.sleep(0.02)

        threads = [threading.Thread(target=read_status), threading.Thread(target=sample_rss)]
        for thread in threads:
            thread.start()
        cpu_before, started = cpu_seconds([process.pid]), time.monotonic()
        try:
            lines = run_job(client, big).lines
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        if lines != big_requests:
            raise RuntimeError(f"the output has {lines} lines for {big_requests} requests")
        return Run(setting, time.monotonic() - started, cpu_seconds([process.pid]) - cpu_before, latencies, *peaks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300_000, help="requests of the large job")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, the settings interleaved")
    args = parser.parse_args(argv)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as folder:
        root = Path(folder)
        big, small = root / "big.jsonl", root / "small.jsonl"
        write_input(big, args.requests)
        write_input(small, 100)
        with emulator_process(root, "floor", ["gpt-4o-mini"]) as emulator:
            for _ in range(args.rounds):
                for setting in (2, 1, 0):
                    runs.append(one_run(root, emulator, big, args.requests, small, setting))
                    report(runs[-1:], args.requests, header=len(runs) == 1)
    return 0


def report(runs: list[Run], requests: int, *, header: bool) -> None:
    if header:
        print(f"{requests:,} requests through one `batchgw serve`; status reads of a finished batch every 10 ms")
        print(f"{'cpu_processes':>13} {'job s':>7} {'CPU s':>6} {'reads':>6} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} {'gateway RSS':>12} {'CPU process RSS':>16}")  # fmt: skip
    for run in runs:
        cpu_rss = f"{run.cpu_process_rss / MB:.0f} MB" if run.cpu_process_rss else "-"
        print(
            f"{run.setting:>13} {run.job_s:>7.2f} {run.cpu_s:>6.1f} {len(run.latencies):>6} "
            f"{run.percentile(0.5):>7.1f} {run.percentile(0.99):>7.1f} {max(run.latencies) * 1000:>7.0f} "
            f"{run.gateway_rss / MB:>9.0f} MB {cpu_rss:>16}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
