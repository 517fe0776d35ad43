"""Upload + validation throughput and the server's peak memory on a large batch input file.

Run ``python -m tests.bench.bench_upload [--lines N] [--rounds R] [--profile]``. It writes an N-request chat
JSONL file (default 1,000,000 lines of about 500 bytes: about 500 MB) to a temporary folder, then, R times,
starts ``batchgw serve`` on a free port with a temporary data folder and SQLite, uploads the file with the
official SDK (streamed from disk), creates a batch and polls until it leaves ``validating``. Each round runs
twice, interleaved: with the default settings (the lines are checked while they upload) and with
``limits.upload_check_processes = 0`` (checked only once the batch is created, as a gateway without the
upload check does). The server runs with default settings otherwise (the tests' short worker poll interval
is put back to the default, since idle worker loops compete for the CPU); ``--env NAME=VALUE`` changes a
setting for both.

It prints, per run, upload and validation time, the combined upload + validation throughput, and the peak
RSS of the server process (sampled every 50 ms, and the kernel's high-water mark, VmHWM) and of its largest
child process (the upload check's, or the worker's CPU process). MB means 10^6 bytes.

``--profile`` then runs the two stages in this process under cProfile (the intake parser fed the
same multipart body in 64 KiB pieces, and ``validate_input_file`` on the file) and prints where the
time goes, to compare with the end-to-end figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import random
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from gateway.settings import WorkerSettings
from tests.bench import RssSampler, high_water_mark
from tests.conftest import GatewayProcess, free_port

MB = 1_000_000
TARGET_MB_S = 200.0
TARGET_RSS_MB = 256.0
NO_UPLOAD_CHECK = {"BATCHGW_LIMITS__UPLOAD_CHECK_PROCESSES": "0"}

SYSTEM_PROMPTS = [
    "You are a helpful assistant that answers customer questions about orders, shipping and returns. "
    "Be polite, keep answers under 80 words and never promise a refund the policy does not allow.",
    "You are a careful analyst. Summarise the text the user gives you in three short bullet points, "
    "keeping every number exactly as written and marking any claim you cannot verify.",
    "You translate English product descriptions into plain, friendly French without adding claims. "
    "Keep measurements in metric units and leave brand names untranslated.",
    "You are a support agent for a software company. Be concise, cite the relevant setting by name "
    "and link to the documentation section when one exists.",
]
QUESTIONS = [
    "My order {n} arrived with a cracked screen protector. Can I get a replacement without returning the phone?",
    "Summarise: The quarterly report shows revenue up {n}% while costs stayed flat, driven by subscriptions.",
    "Translate: Lightweight waterproof jacket with taped seams, two zip pockets and an adjustable hood, size {n}.",
    "After upgrading to version 4.{n} the export button is greyed out. Which setting turns it back on?",
    "How long does standard shipping take to postcode {n}, and is there a cheaper option for small parcels?",
]


@dataclass
class Figures:
    """What one run measured."""

    size: int
    lines: int
    upload_s: float
    validation_s: float
    peak_rss_sampled: int
    peak_rss_hwm: int | None
    child_rss_hwm: int | None
    idle_rss: int
    status: str
    total: int
    passed: bool
    errors: list[str]


def request_lines(count: int, seed: int = 7) -> Iterator[bytes]:
    """Chat requests of about 500 bytes each, with varied realistic messages."""
    rng = random.Random(seed)
    for i in range(count):
        question = rng.choice(QUESTIONS).format(n=rng.randint(10, 99_999))
        line = {
            "custom_id": f"request-{i:08d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)},
                    {"role": "user", "content": question},
                ],
                "max_tokens": rng.choice([64, 128, 256]),
                "temperature": rng.choice([0, 0.2, 0.7]),
            },
        }
        yield json.dumps(line, separators=(",", ":")).encode() + b"\n"


def write_input(path: Path, count: int) -> int:
    """Write the input file; return its size."""
    with path.open("wb", buffering=4 * 1024 * 1024) as handle:
        batch: list[bytes] = []
        for line in request_lines(count):
            batch.append(line)
            if len(batch) == 10_000:
                handle.write(b"".join(batch))
                batch.clear()
        handle.write(b"".join(batch))
    return path.stat().st_size


def measure(path: Path, lines: int, workdir: Path, extra_env: dict[str, str] | None = None) -> Figures:
    """Start a gateway, upload, create a batch, wait for validation; return the figures."""
    production_poll = {"BATCHGW_WORKER__POLL_INTERVAL_S": str(WorkerSettings().poll_interval_s)}
    gateway = GatewayProcess(
        data_dir=workdir / "data",
        database_url=f"sqlite:///{workdir / 'data' / 'gateway.db'}",
        port=free_port(),
        extra_env=production_poll | (extra_env or {}),
    )
    gateway.data_dir.mkdir(parents=True, exist_ok=True)
    gateway.start()
    assert gateway.process is not None
    pid = gateway.process.pid
    try:
        client = gateway.client(gateway.create_key("bench"), timeout=3600.0)
        idle_rss = psutil.Process(pid).memory_info().rss
        sampler = RssSampler(pid)
        sampler.start()

        started = time.perf_counter()
        with path.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        upload_s = time.perf_counter() - started
        assert uploaded.bytes == path.stat().st_size, uploaded

        started = time.perf_counter()
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status == "validating":
            time.sleep(0.05)
            batch = client.batches.retrieve(batch.id)
        validation_s = time.perf_counter() - started

        peak = sampler.stop()
        hwm = high_water_mark(pid)
        children = [high_water_mark(child.pid) or 0 for child in psutil.Process(pid).children(recursive=True)]
        errors = [f"{e.code} (line {e.line}): {e.message}" for e in ((batch.errors.data or []) if batch.errors else [])]
        return Figures(
            size=uploaded.bytes,
            lines=lines,
            upload_s=upload_s,
            validation_s=validation_s,
            peak_rss_sampled=peak,
            peak_rss_hwm=hwm,
            child_rss_hwm=max(children, default=None),
            idle_rss=idle_rss,
            status=batch.status,
            total=batch.request_counts.total if batch.request_counts else 0,
            passed=batch.in_progress_at is not None,
            errors=errors[:3],
        )
    finally:
        gateway.stop()


def report(runs: list[tuple[str, Figures]]) -> None:
    """Print the runs side by side and whether the targets are met."""
    first = runs[0][1]
    print(f"file: {first.size / MB:,.1f} MB ({first.size:,} bytes), {first.lines:,} lines")
    header = (
        f"{'run':<34} {'upload':>14} {'validation':>16} {'upload + validation':>22} "
        f"{'server RSS peak / VmHWM':>24} {'child VmHWM':>12}  result"
    )
    print(header)
    for name, figures in runs:
        size_mb = figures.size / MB
        combined_s = figures.upload_s + figures.validation_s
        hwm = f"{figures.peak_rss_hwm / MB:,.0f}" if figures.peak_rss_hwm else "-"
        child = f"{figures.child_rss_hwm / MB:,.0f} MB" if figures.child_rss_hwm else "-"
        result = figures.status if not figures.errors else f"{figures.status}: {'; '.join(figures.errors)}"
        print(
            f"{name:<34} {figures.upload_s:6.2f} s {size_mb / figures.upload_s:4.0f} MB/s"
            f" {figures.validation_s:6.2f} s {size_mb / figures.validation_s:5.0f} MB/s"
            f" {combined_s:6.2f} s {size_mb / combined_s:5.0f} MB/s"
            f" {figures.peak_rss_sampled / MB:12,.0f} / {hwm:>6} MB {child:>12}  {result}"
        )
    checked = [f for name, f in runs if name.startswith("checked while uploading")]
    rates = [f.size / MB / (f.upload_s + f.validation_s) for f in checked]
    rss = max(max(f.peak_rss_sampled, f.peak_rss_hwm or 0, f.child_rss_hwm or 0) for f in checked) / MB
    met = min(rates) >= TARGET_MB_S and rss <= TARGET_RSS_MB
    print(
        f"targets (upload + validation >= {TARGET_MB_S:.0f} MB/s, every process's peak RSS <= {TARGET_RSS_MB:.0f} MB), "
        f"runs with the check while uploading: {min(rates):,.0f} to {max(rates):,.0f} MB/s, at most {rss:,.0f} MB: "
        f"{'met in every run' if met else 'missed'}"
    )


# --- in-process profiles of the two stages ------------------------------------------------------


def multipart_head_and_tail(filename: str) -> tuple[str, bytes, bytes]:
    """Content type, and the multipart bytes before and after the file's content."""
    request = httpx.Request(
        "POST", "http://bench/v1/files", data={"purpose": "batch"}, files={"file": (filename, io.BytesIO(b"@@"))}
    )
    body = request.read()
    head, tail = body.split(b"@@")
    return request.headers["content-type"], head, tail


async def multipart_body(path: Path, head: bytes, tail: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The multipart body in pieces of the size an ASGI server hands over."""
    yield head
    with path.open("rb") as handle:
        while chunk := handle.read(piece):
            yield chunk
    yield tail


def profile_stages(path: Path, workdir: Path) -> None:
    """Time and profile intake and validation in this process."""
    from gateway.pipeline.input_lines import validate_input_file
    from gateway.pipeline.intake import receive_upload
    from gateway.settings import LimitSettings
    from gateway.storage import LocalBlobStore

    size_mb = path.stat().st_size / MB
    content_type, head, tail = multipart_head_and_tail(path.name)
    blobs = LocalBlobStore(workdir / "profile-blobs")

    async def intake() -> None:
        await receive_upload(
            content_type, multipart_body(path, head, tail), blobs, "files/profile", max_bytes=10**12, max_lines=10**9
        )

    async def read_only() -> None:
        async for _ in multipart_body(path, head, tail):
            pass

    started = time.perf_counter()
    asyncio.run(read_only())
    print(f"\nreading the body in 64 KiB pieces alone: {size_mb / (time.perf_counter() - started):,.0f} MB/s")

    for name, run in (
        ("intake (receive_upload)", lambda: asyncio.run(intake())),
        (
            "validation (validate_input_file)",
            lambda: validate_input_file(path, "/v1/chat/completions", LimitSettings()),
        ),
    ):
        started = time.perf_counter()
        run()
        plain = time.perf_counter() - started
        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        print(f"\n=== {name}: {plain:.2f} s without profiler, {size_mb / plain:,.1f} MB/s ===")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="requests in the input file")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, interleaved")
    parser.add_argument("--profile", action="store_true", help="profile intake and validation in-process after")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra BATCHGW_* setting for the server"
    )
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)

    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        workdir = Path(tmp)
        path = workdir / "requests.jsonl"
        started = time.perf_counter()
        size = write_input(path, args.lines)
        print(f"wrote {args.lines:,} lines, {size / MB:,.1f} MB in {time.perf_counter() - started:.1f} s", flush=True)
        runs: list[tuple[str, Figures]] = []
        for round_ in range(1, args.rounds + 1):
            for name, settings in (
                ("checked while uploading", {}),
                ("checked at batch creation", NO_UPLOAD_CHECK),
            ):
                figures = measure(path, args.lines, workdir / f"{round_}-{len(runs)}", settings | extra_env)
                runs.append((f"{name}, round {round_}", figures))
                print(f"  {runs[-1][0]}: {figures.upload_s + figures.validation_s:.2f} s", flush=True)
        report(runs)
        if args.profile:
            profile_stages(path, workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
