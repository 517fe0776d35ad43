"""What :mod:`tests.bench.bench_floor` measured and how it prints it: each job's figures, each size's table, where
the gateway's time went, the CPU seconds of every process, and the status reads."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

from tests.bench.job_stages import MILESTONES, median_milestones
from tests.bench.status_load import STATUS_CONNECTIONS, StatusFigures

MB = 1_000_000
PROVIDER_MAX_LINES = 50_000
GOAL_RATIO_SMALL = 1.5
GOAL_RATIO_SPLIT = 1.25
GOAL_STATUS_SHARE = 0.8
GOAL_STATUS_P99_MS = 100.0
GOAL_CPU_PER_100K = 1.5


@dataclass
class ProcessCpu:
    """CPU seconds each process used during one job: the emulator's, and the gateway's by process."""

    emulator: float
    api: float = 0.0
    api_children: float = 0.0
    """The API's upload check processes."""
    worker: float = 0.0
    worker_children: float = 0.0
    """The worker's CPU processes (validation, joins)."""

    @property
    def gateway(self) -> float:
        return self.api + self.api_children + self.worker + self.worker_children


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
    floor_emulator_cpu: list[float] = field(default_factory=list)
    """The emulator's CPU seconds for the floor's job (its parts summed)."""
    gateway_cpu: list[ProcessCpu] = field(default_factory=list)
    api_rss: int = 0
    worker_rss: int = 0


StatusPair = tuple[StatusFigures, StatusFigures]
"""Status-read figures of the emulator and the gateway, measured one after the other."""


@dataclass
class StatusRuns:
    """Status reads of a completed batch and of one in progress, a pair per round."""

    completed: list[StatusPair] = field(default_factory=list)
    live: list[StatusPair] = field(default_factory=list)


def report_size(figures: SizeFigures, live: bool = False) -> None:
    if live:
        run = figures.gateway[-1]
        print(
            f"  {figures.requests:>9,}: floor {figures.floor[-1]:7.2f} s, gateway {run.total_s:7.2f} s "
            f"(upload {run.upload_s:.2f} s, validation {run.validate_s:.2f} s, download {run.download_s:.2f} s), "
            f"ratio {run.total_s / figures.floor[-1]:.2f}x, gateway CPU {figures.gateway_cpu[-1].gateway:.1f} s",
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
        cpu = statistics.median(run.gateway for run in figures.gateway_cpu) / figures.requests * 100_000
        print(
            f"{figures.requests:>10,} {figures.input_mb:>9.1f} {floor:>9.2f} {gateway:>10.2f} "
            f"{gateway / floor:>6.2f}x {'<=' + format(goal, '.2f'):>7} {figures.input_mb / intake:>19.0f} "
            f"{cpu:>11.2f} {figures.api_rss / MB:>6.0f}MB {figures.worker_rss / MB:>9.0f}MB"
        )
    report_milestones(sizes)
    report_cpu(sizes)
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


def report_cpu(sizes: list[SizeFigures]) -> None:
    """The CPU seconds of each process during a job, medians over the rounds: the emulator's for the floor's job
    and for the gateway's (the same requests, sent as the gateway's shards), and the gateway's by process."""
    if not any(figures.gateway_cpu for figures in sizes):
        return
    print("\nCPU seconds of each process during a job (the gateway's check and CPU processes apart)")
    print(f"{'requests':>10} {'emulator, floor':>16} {'emulator, gateway':>18} {'API':>6} {'check':>6} "
          f"{'worker':>7} {'CPU process':>12} {'gateway':>8}")  # fmt: skip
    median = statistics.median
    for figures in sizes:
        if not figures.gateway_cpu or not figures.floor_emulator_cpu:
            continue
        runs = figures.gateway_cpu
        print(
            f"{figures.requests:>10,} {median(figures.floor_emulator_cpu):>16.2f} "
            f"{median([run.emulator for run in runs]):>18.2f} {median([run.api for run in runs]):>6.2f} "
            f"{median([run.api_children for run in runs]):>6.2f} {median([run.worker for run in runs]):>7.2f} "
            f"{median([run.worker_children for run in runs]):>12.2f} {median([run.gateway for run in runs]):>8.2f}"
        )
