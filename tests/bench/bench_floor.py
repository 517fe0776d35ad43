"""The same client straight at a provider emulator (the floor) and through the gateway, side by side.

Run ``python -m tests.bench.bench_floor`` (sizes 10,000, 50,000 and 300,000 requests; ``--million`` adds
1,000,000; ``--sizes`` picks others). One OpenAI-protocol emulator answering at once runs in a process of
its own; the gateway runs as ``batchgw serve --no-worker`` plus one ``batchgw worker`` on SQLite (or
``--database-url``) with production polling settings, routed to that emulator. For every size, the
official ``openai`` client runs the same job both ways, interleaved (floor, gateway, floor, ...,
``--rounds`` times): upload, create, poll every 20 ms, download, count the output lines. A job larger
than the provider's 50,000-request limit is run at the floor as 50,000-request jobs one after another
(what a client without the gateway would do), and its floor is their summed time. With
``--provider-webhooks`` the emulator posts OpenAI's batch webhooks to the gateway, which then polls an
ended batch at once instead of at its next scheduled poll.

Printed per size: both times and their ratio; the input's MB over the time from the upload's start
to the batch leaving ``validating``, as the client sees it (so it includes the worker noticing the new
batch); the gateway's CPU seconds (API + worker, with the worker's CPU processes) per 100,000 requests;
the peak RSS of each process. Then, per size, where the gateway's time went: each step it logs (validated,
routed, canary released, last shard submitted, the provider's last end announced by its webhook, last shard
collected, merged) in seconds after the create call, beside the floor's wait for its own batches
(:mod:`tests.bench.job_stages`). Then the CPU seconds of each process during a job: the emulator's for the
floor's job and for the gateway's (the same requests, as the gateway's shards), and the gateway's API, upload
check, worker and worker's CPU process (:mod:`tests.bench.floor_report` prints the tables).
Then status reads with 32 connections for ``--status-seconds``, emulator and gateway interleaved, of a
completed batch and then of a batch in progress (100 requests held running by the emulator's ``stall``
fault; the gateway's status of such a batch also reads its open shards): requests per second and p50/p99
latency of each, the server's CPU milliseconds per read (the API process's: a PostgreSQL server's CPU is not
counted), and this client's own CPU share.
MB means 10^6 bytes. The client runs in this process, so the figures include its own cost on both sides
alike. When the client's share nears 100 % it is the bottleneck and RPS measures the client rather than
the server; the server CPU per read is then the comparison that holds (its inverse is the reads one core
of that server could answer).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from gateway.settings import WorkerSettings
from tests.bench import EmulatorProcess, RssSampler, cpu_seconds, emulator_process, fresh_database
from tests.bench.bench_engine import write_input
from tests.bench.floor_report import (
    MB,
    PROVIDER_MAX_LINES,
    JobRun,
    ProcessCpu,
    SizeFigures,
    StatusRuns,
    report,
    report_size,
)
from tests.bench.job_stages import job_milestones
from tests.bench.status_load import status_load
from tests.conftest import GatewayProcess, cpu_pool_processes, free_port
from tests.engine import worker_process

POLL_S = 0.02
STATUS_LIVE_REQUESTS = 100
WEBHOOK_SECRET = "whsec_YmVuY2htYXJrIHdlYmhvb2sga2V5IG9mIDMyIGJ5dGVzIQ=="
TERMINAL = ("completed", "failed", "expired", "cancelled")


def run_job(client: openai.OpenAI, path: Path) -> JobRun:
    """Upload ``path``, create its batch, poll until it ends, download its output."""
    started = time.monotonic()
    with path.open("rb") as handle:
        file = client.files.create(file=(path.name, handle), purpose="batch")
    uploaded = time.monotonic()
    created_at = time.time()
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    validated: float | None = None
    while batch.status not in TERMINAL:
        if validated is None and batch.status != "validating":
            validated = time.monotonic()
        time.sleep(POLL_S)
        batch = client.batches.retrieve(batch.id)
    done = time.monotonic()
    ended_at = time.time()
    if batch.status != "completed" or batch.output_file_id is None:
        raise RuntimeError(f"batch {batch.id} ended {batch.status}: {batch.errors}")
    lines = 0
    with client.files.with_streaming_response.content(batch.output_file_id) as response:
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
    finished = time.monotonic()
    return JobRun(
        upload_s=uploaded - started,
        validate_s=(validated or done) - uploaded,
        wait_s=done - uploaded,
        download_s=finished - done,
        lines=lines,
        batch_id=batch.id,
        created_at=created_at,
        ended_at=ended_at,
    )


def own_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` itself has used."""
    return cpu_seconds([pid], children=False)


@dataclass
class CpuSnapshot:
    """CPU seconds the emulator, the API and the worker have used so far, and each live check or CPU process of
    the latter two by process id."""

    emulator: float
    api: float
    worker: float
    api_children: dict[int, float]
    worker_children: dict[int, float]

    @classmethod
    def take(cls, emulator: int, api: int, worker: int) -> CpuSnapshot:
        def children(pid: int) -> dict[int, float]:
            return {child.pid: own_cpu(child.pid) for child in cpu_pool_processes(pid)}

        return cls(own_cpu(emulator), own_cpu(api), own_cpu(worker), children(api), children(worker))

    def since(self, before: CpuSnapshot) -> ProcessCpu:
        """What each process used after ``before``: a child started in between counts whole, one that ended in
        between is not seen."""

        def grown(now: dict[int, float], then: dict[int, float]) -> float:
            return sum(seconds - then.get(pid, 0.0) for pid, seconds in now.items())

        return ProcessCpu(
            emulator=self.emulator - before.emulator,
            api=self.api - before.api,
            api_children=grown(self.api_children, before.api_children),
            worker=self.worker - before.worker,
            worker_children=grown(self.worker_children, before.worker_children),
        )


def split_input(path: Path, lines_per_part: int) -> list[Path]:
    """``path`` cut into files of at most ``lines_per_part`` lines (the provider's per-batch limit)."""
    parts: list[Path] = []
    with path.open("rb") as source:
        out = None
        for number, line in enumerate(source):
            if number % lines_per_part == 0:
                if out is not None:
                    out.close()
                parts.append(path.with_name(f"{path.stem}-part{len(parts):03d}.jsonl"))
                out = parts[-1].open("wb")
            assert out is not None
            out.write(line)
        if out is not None:
            out.close()
    return parts


def gateway_env(root: Path, emulator: EmulatorProcess, *, webhooks: bool = False) -> dict[str, str]:
    """The gateway's settings: one provider on the emulator (taking its webhooks with ``webhooks``), production
    polling."""
    config = root / "providers.toml"
    config.write_text(
        "[providers.floor]\n"
        'kind = "openai"\n'
        f'base_url = "{emulator.base_url}"\n'
        + ('webhook_secret_env = "FLOOR_WEBHOOK_SECRET"\n' if webhooks else "")
        + 'models = { "gpt-4o-mini" = "gpt-4o-mini" }\n',
        encoding="utf-8",
    )
    # Production settings: the tests' fast polling would flatter the figures and busy the CPU.
    defaults = WorkerSettings()
    return {
        **({"FLOOR_WEBHOOK_SECRET": WEBHOOK_SECRET} if webhooks else {}),
        "BATCHGW_CONFIG_FILE": str(config),
        "BATCHGW_WORKER__POLL_INTERVAL_S": str(defaults.poll_interval_s),
        "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": str(defaults.provider_poll_min_s),
        "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": str(defaults.provider_poll_max_s),
    }


def measure(args: argparse.Namespace, root: Path) -> tuple[list[SizeFigures], StatusRuns]:
    sizes: list[SizeFigures] = []
    status = StatusRuns()
    with ExitStack() as stack:
        port = free_port()
        hooks = (
            f'webhook_url = "http://127.0.0.1:{port}/webhooks/providers/floor"\nwebhook_secret = "{WEBHOOK_SECRET}"\n'
        )
        emulator = stack.enter_context(
            emulator_process(root, "floor", ["gpt-4o-mini"], hooks if args.provider_webhooks else "")
        )
        gateway_dir = root / "gateway"
        gateway_dir.mkdir()
        database_url, _ = stack.enter_context(fresh_database(args.database_url, gateway_dir))
        env = gateway_env(root, emulator, webhooks=args.provider_webhooks) | dict(
            item.split("=", 1) for item in args.env
        )
        api = GatewayProcess(data_dir=gateway_dir, database_url=database_url, port=port, extra_env=env)
        api.start("serve", "--no-worker")
        stack.callback(api.stop)
        worker = worker_process(api, "worker").start("worker")
        stack.callback(worker.stop)
        assert api.process is not None and worker.process is not None
        pids = [api.process.pid, worker.process.pid]
        key = api.create_key("bench")
        direct = openai.OpenAI(base_url=emulator.base_url, api_key="bench", timeout=1800, max_retries=0)
        through = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=key, timeout=1800, max_retries=0)
        time.sleep(3.0)  # the worker's start-up (imports, migrations) is not the engine's time

        for count in args.sizes:
            path = root / f"input-{count}.jsonl"
            figures = SizeFigures(requests=count, input_mb=write_input(path, count) / MB)
            parts = split_input(path, PROVIDER_MAX_LINES) if count > PROVIDER_MAX_LINES else [path]
            for _ in range(args.rounds):
                emulator_before = own_cpu(emulator.pid)
                floor_runs = [run_job(direct, part) for part in parts]
                figures.floor_emulator_cpu.append(own_cpu(emulator.pid) - emulator_before)
                if sum(run.lines for run in floor_runs) != count:
                    raise RuntimeError("the floor's outputs do not hold one line per request")
                figures.floor.append(sum(run.total_s for run in floor_runs))
                figures.floor_wait.append(sum(run.wait_s for run in floor_runs))
                figures.floor_batch_id = floor_runs[-1].batch_id
                samplers = [RssSampler(pid, interval=0.02) for pid in pids]
                for sampler in samplers:
                    sampler.start()
                cpu_before = CpuSnapshot.take(emulator.pid, *pids)
                run = run_job(through, path)
                figures.gateway_cpu.append(CpuSnapshot.take(emulator.pid, *pids).since(cpu_before))
                api_peak, worker_peak = (sampler.stop() for sampler in samplers)
                figures.api_rss = max(figures.api_rss, api_peak)
                figures.worker_rss = max(figures.worker_rss, worker_peak)
                if run.lines != count:
                    raise RuntimeError(f"the gateway's output has {run.lines} lines for {count} requests")
                run.milestones = job_milestones([api.log(), worker.log()], run.batch_id, run.created_at, run.ended_at)
                figures.gateway.append(run)
                report_size(figures, live=True)
            sizes.append(figures)
            for part in parts:
                if part != path:
                    part.unlink()

        if args.status_seconds <= 0:
            return sizes, status  # the jobs alone
        floor_batch, gateway_batch = sizes[0].floor_batch_id, sizes[0].gateway[-1].batch_id
        live_floor, live_gateway = live_batches(emulator, direct, through, root)
        for batches, pairs in (
            ((floor_batch, gateway_batch), status.completed),
            ((live_floor, live_gateway), status.live),
        ):
            for _ in range(args.rounds):
                emulator_figures = asyncio.run(
                    status_load(f"{emulator.base_url}/batches/{batches[0]}", "bench", args.status_seconds, emulator.pid)
                )
                gateway_figures = asyncio.run(
                    status_load(f"{api.base_url}/v1/batches/{batches[1]}", key, args.status_seconds, pids[0])
                )
                pairs.append((emulator_figures, gateway_figures))
        for client, batch_id in ((direct, live_floor), (through, live_gateway)):
            client.batches.cancel(batch_id)
        httpx.post(f"{emulator.control_url}/providers/floor/faults", json={"stall": False}, timeout=10)
    return sizes, status


def live_batches(
    emulator: EmulatorProcess, direct: openai.OpenAI, through: openai.OpenAI, root: Path
) -> tuple[str, str]:
    """A batch in progress at the emulator and one through the gateway: ``STATUS_LIVE_REQUESTS`` requests each,
    kept running by the emulator's ``stall`` fault (the gateway's has its one shard submitted)."""
    path = root / "input-live.jsonl"
    write_input(path, STATUS_LIVE_REQUESTS)
    httpx.post(f"{emulator.control_url}/providers/floor/faults", json={"stall": True}, timeout=10).raise_for_status()
    ids = []
    for client in (direct, through):
        with path.open("rb") as handle:
            file = client.files.create(file=(path.name, handle), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while batch.status != "in_progress":
            if batch.status in TERMINAL or time.monotonic() > deadline:
                raise RuntimeError(f"the live batch {batch.id} is {batch.status}: {batch.errors}")
            time.sleep(POLL_S)
            batch = client.batches.retrieve(batch.id)
        ids.append(batch.id)
    time.sleep(1.0)  # the gateway's shard reaches the provider
    return ids[0], ids[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,50000,300000", help="request counts, comma-separated")
    parser.add_argument("--million", action="store_true", help="add a 1,000,000-request job")
    parser.add_argument("--rounds", type=int, default=1, help="floor/gateway pairs per size (default 1)")
    parser.add_argument(
        "--status-seconds", type=float, default=5.0, help="length of each status-read run (0: no status reads)"
    )
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to create the gateway's database on (default: SQLite)"
    )
    parser.add_argument(
        "--provider-webhooks",
        action="store_true",
        help="the emulator posts OpenAI's batch webhooks to the gateway, which polls an ended batch at once",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra BATCHGW_* setting for the gateway (BATCHGW_ROUTING__CANARY_REQUESTS=0: no default canary)",
    )
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")] + ([1_000_000] if args.million else [])
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
        sizes, status = measure(args, Path(folder))
    report(sizes, status, "on" if args.provider_webhooks else "off", args.env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
