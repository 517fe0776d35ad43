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
(:mod:`tests.bench.job_stages`).
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
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from gateway.settings import WorkerSettings
from tests.bench import EmulatorProcess, RssSampler, cpu_seconds, emulator_process, fresh_database
from tests.bench.bench_engine import write_input
from tests.bench.job_stages import MILESTONES, job_milestones, median_milestones
from tests.bench.status_load import STATUS_CONNECTIONS, StatusFigures, status_load
from tests.conftest import GatewayProcess, free_port
from tests.engine import worker_process

MB = 1_000_000
PROVIDER_MAX_LINES = 50_000
POLL_S = 0.02
STATUS_LIVE_REQUESTS = 100
GOAL_RATIO_SMALL = 1.5
GOAL_RATIO_SPLIT = 1.25
GOAL_STATUS_SHARE = 0.8
GOAL_STATUS_P99_MS = 100.0
GOAL_CPU_PER_100K = 1.5
WEBHOOK_SECRET = "whsec_YmVuY2htYXJrIHdlYmhvb2sga2V5IG9mIDMyIGJ5dGVzIQ=="
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class JobRun:
    """One client journey: upload, create, wait, download."""

    upload_s: float
    validate_s: float
    wait_s: float
    download_s: float
    lines: int
    batch_id: str
    created_at: float = 0.0
    """Unix time of the create call (the logs' clock)."""
    ended_at: float = 0.0
    """Unix time the client saw the batch end."""
    milestones: dict[str, float] = field(default_factory=dict)
    """Seconds from the create call to each step the gateway logged (:mod:`tests.bench.job_stages`)."""

    @property
    def total_s(self) -> float:
        return self.upload_s + self.wait_s + self.download_s


@dataclass
class SizeFigures:
    requests: int
    input_mb: float
    floor: list[float] = field(default_factory=list)
    floor_wait: list[float] = field(default_factory=list)
    """The floor's seconds from each create call to its batch's end, summed over a split job's parts."""
    floor_batch_id: str = ""
    gateway: list[JobRun] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    api_rss: int = 0
    worker_rss: int = 0


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


StatusPair = tuple[StatusFigures, StatusFigures]
"""Status-read figures of the emulator and the gateway, measured one after the other."""


@dataclass
class StatusRuns:
    """Status reads of a completed batch and of one in progress, a pair per round."""

    completed: list[StatusPair] = field(default_factory=list)
    live: list[StatusPair] = field(default_factory=list)


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
                floor_runs = [run_job(direct, part) for part in parts]
                if sum(run.lines for run in floor_runs) != count:
                    raise RuntimeError("the floor's outputs do not hold one line per request")
                figures.floor.append(sum(run.total_s for run in floor_runs))
                figures.floor_wait.append(sum(run.wait_s for run in floor_runs))
                figures.floor_batch_id = floor_runs[-1].batch_id
                samplers = [RssSampler(pid, interval=0.02) for pid in pids]
                for sampler in samplers:
                    sampler.start()
                cpu_before = cpu_seconds(pids)
                run = run_job(through, path)
                figures.cpu_s.append(cpu_seconds(pids) - cpu_before)
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
        for batches, figures in (
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
                figures.append((emulator_figures, gateway_figures))
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


def report_size(figures: SizeFigures, live: bool = False) -> None:
    if live:
        run = figures.gateway[-1]
        print(
            f"  {figures.requests:>9,}: floor {figures.floor[-1]:7.2f} s, gateway {run.total_s:7.2f} s "
            f"(upload {run.upload_s:.2f} s, validation {run.validate_s:.2f} s, download {run.download_s:.2f} s), "
            f"ratio {run.total_s / figures.floor[-1]:.2f}x, gateway CPU {figures.cpu_s[-1]:.1f} s",
            flush=True,
        )


def report(
    sizes: list[SizeFigures], status: StatusRuns, webhooks: str = "off", settings: list[str] | None = None
) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    changed = f"; gateway settings {', '.join(settings)}" if settings else ""
    print(f"\n{cpus} CPUs, 1-minute load average at the end {load:.2f}; provider webhooks {webhooks}{changed}")
    print(f"{'requests':>10} {'input MB':>9} {'floor s':>9} {'gateway s':>10} {'ratio':>7} {'goal':>7} "
          f"{'upload+valid. MB/s':>19} {'CPU s/100k':>11} {'API RSS':>8} {'worker RSS':>11}")  # fmt: skip
    for figures in sizes:
        floor = statistics.median(figures.floor)
        gateway = statistics.median(run.total_s for run in figures.gateway)
        intake = statistics.median(run.upload_s + run.validate_s for run in figures.gateway)
        goal = GOAL_RATIO_SPLIT if figures.requests > PROVIDER_MAX_LINES else GOAL_RATIO_SMALL
        cpu = statistics.median(figures.cpu_s) / figures.requests * 100_000
        print(
            f"{figures.requests:>10,} {figures.input_mb:>9.1f} {floor:>9.2f} {gateway:>10.2f} "
            f"{gateway / floor:>6.2f}x {'<=' + format(goal, '.2f'):>7} {figures.input_mb / intake:>19.0f} "
            f"{cpu:>11.2f} {figures.api_rss / MB:>6.0f}MB {figures.worker_rss / MB:>9.0f}MB"
        )
    report_milestones(sizes)
    for title, pairs in (("a completed batch", status.completed), ("a batch in progress", status.live)):
        if not pairs:
            continue
        print(f"\nstatus reads of {title}, {STATUS_CONNECTIONS} connections")
        print(f"{'':>10} {'RPS':>8} {'p50 ms':>8} {'p99 ms':>8} {'API CPU ms/read':>16} {'client CPU':>11}")
        for emulator_figures, gateway_figures in pairs:
            for name, row in (("emulator", emulator_figures), ("gateway", gateway_figures)):
                print(
                    f"{name:>10} {row.rps:>8.0f} {row.p50_ms:>8.1f} {row.p99_ms:>8.1f} {row.server_cpu_ms:>16.3f} "
                    f"{row.client_cpu_share:>10.0%}"
                )
            share = gateway_figures.rps / emulator_figures.rps
            capacity = emulator_figures.server_cpu_ms / gateway_figures.server_cpu_ms
            print(
                f"{'':>10} gateway/emulator RPS {share:.2f} (goal >= {GOAL_STATUS_SHARE}), by server CPU per read "
                f"{capacity:.2f}; p99 {gateway_figures.p99_ms:.0f} ms (goal < {GOAL_STATUS_P99_MS:.0f} ms)"
            )


def report_milestones(sizes: list[SizeFigures]) -> None:
    """Where the gateway's jobs spent their time, step by step (a step with no log line shows ``-``), beside the
    floor's wait for the same jobs: medians over the rounds."""
    names = [name for name, _, _ in MILESTONES]
    print("\nwhere the gateway's time went: seconds after the create call (upload: before it; download: after)")
    print(f"{'requests':>10} {'upload':>7} " + " ".join(f"{name:>{max(9, len(name))}}" for name in names)
          + f" {'client sees':>11} {'download':>9} {'floor sees':>11}")  # fmt: skip
    for figures in sizes:
        runs = figures.gateway
        steps = median_milestones([run.milestones for run in runs])
        cells = [f"{steps[name]:.2f}" if name in steps else "-" for name in names]
        print(
            f"{figures.requests:>10,} {statistics.median(run.upload_s for run in runs):>7.2f} "
            + " ".join(f"{cell:>{max(9, len(name))}}" for name, cell in zip(names, cells, strict=True))
            + f" {statistics.median(run.wait_s for run in runs):>11.2f}"
            f" {statistics.median(run.download_s for run in runs):>9.2f} {statistics.median(figures.floor_wait):>11.2f}"
        )


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
