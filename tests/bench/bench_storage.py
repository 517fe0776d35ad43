"""Upload throughput and the gateway's peak memory with blobs in object storage and in the local folder.

Run ``python -m tests.bench.bench_storage [--size-gb 1] [--download]`` (``--size-gb 2`` for a 2 GB file).
It writes a JSONL file of chat requests of the given size to a temporary folder, then, one after the
other in the same run, starts ``batchgw serve`` (SQLite, default settings) with its blobs

* in S3: a bucket on moto's standalone S3 server, started on a free loopback port, and
* in the local blob folder,

uploads the file with the official SDK (streamed from disk) and checks the stored size. It prints
for both the upload time and MB/s and the gateway's peak RSS (sampled every 50 ms, and the kernel's
high-water mark VmHWM) against its RSS when idle. ``--download`` also fetches the file back through
``files.content`` and times it. MB means 10^6 bytes.

The S3 figures are bounded by the test server, a single Python process that keeps objects in memory
and copies a whole object for each ranged read: they show the gateway's memory staying flat and a
lower bound of its throughput, not what AWS S3 or MinIO would reach.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from gateway.settings import WorkerSettings
from tests.bench import RssSampler, high_water_mark
from tests.conftest import S3_TEST_CREDENTIALS, GatewayProcess, free_port, start_s3_server, stop_s3_server

MB = 1_000_000
GB = 1_000_000_000


@dataclass
class Figures:
    """What one upload measured."""

    store: str
    size: int
    upload_s: float
    upload_cpu_s: float
    """CPU seconds the gateway spent on the upload."""
    server_cpu_s: float | None
    """CPU seconds the S3 test server spent on the upload."""
    download_s: float | None
    idle_rss: int
    peak_rss: int
    peak_hwm: int | None


def write_input(path: Path, size: int) -> int:
    """A JSONL file of about ``size`` bytes of distinct chat requests; returns its size."""
    with path.open("wb", buffering=8 * 1024 * 1024) as handle:
        written = n = 0
        while written < size:
            lines = []
            for _ in range(10_000):
                line = {
                    "custom_id": f"request-{n:09d}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"Summarise item {n}: " + "lorem ipsum " * 30}],
                        "max_tokens": 64,
                    },
                }
                lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                n += 1
            chunk = b"".join(lines)
            handle.write(chunk)
            written += len(chunk)
    return path.stat().st_size


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(
    store: str, path: Path, workdir: Path, env: dict[str, str], download: bool, server_pid: int | None = None
) -> Figures:
    """Start a gateway with ``env``, upload the file (and fetch it back); return the figures."""
    settings = {
        "BATCHGW_WORKER__POLL_INTERVAL_S": str(WorkerSettings().poll_interval_s),
        "BATCHGW_LIMITS__MAX_UPLOAD_BYTES": str(path.stat().st_size + MB),
        "BATCHGW_LIMITS__MAX_FILE_LINES": "100000000",
    }
    data = workdir / store
    data.mkdir()
    gateway = GatewayProcess(
        data_dir=data, database_url=f"sqlite:///{data / 'gateway.db'}", port=free_port(), extra_env=settings | env
    )
    gateway.start()
    assert gateway.process is not None
    pid = gateway.process.pid
    try:
        client = gateway.client(gateway.create_key("bench"), timeout=3600.0)
        time.sleep(1.0)
        idle = psutil.Process(pid).memory_info().rss
        sampler = RssSampler(pid)
        sampler.start()
        server = psutil.Process(server_pid) if server_pid else None
        cpu_before, server_before = cpu_seconds(psutil.Process(pid)), cpu_seconds(server)
        started = time.perf_counter()
        with path.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        upload_s = time.perf_counter() - started
        upload_cpu_s = cpu_seconds(psutil.Process(pid)) - cpu_before
        server_cpu_s = cpu_seconds(server) - server_before if server else None
        assert uploaded.bytes == path.stat().st_size, uploaded
        download_s = None
        if download:
            started = time.perf_counter()
            received = 0
            with client.files.with_streaming_response.content(uploaded.id) as response:
                for chunk in response.iter_bytes(1024 * 1024):
                    received += len(chunk)
            download_s = time.perf_counter() - started
            assert received == uploaded.bytes
        peak = sampler.stop()
        return Figures(
            store, uploaded.bytes, upload_s, upload_cpu_s, server_cpu_s, download_s, idle, peak, high_water_mark(pid)
        )
    finally:
        gateway.stop()


def report(rows: list[Figures]) -> None:
    print(
        f"{'store':<6} {'size':>6} {'upload':>7} {'MB/s':>6} {'gw CPU':>7} {'S3 CPU':>7} {'download':>8} {'MB/s':>6} "
        f"{'idle RSS':>8} {'peak RSS':>8} {'VmHWM':>6} {'growth':>6}"
    )
    for f in rows:
        size = f.size / MB
        down = f"{f.download_s:7.1f}s {size / f.download_s:6.1f}" if f.download_s else f"{'-':>8} {'-':>6}"
        server = f"{f.server_cpu_s:6.1f}s" if f.server_cpu_s is not None else f"{'-':>7}"
        hwm = f"{f.peak_hwm / MB:5.0f}M" if f.peak_hwm else f"{'-':>6}"
        print(
            f"{f.store:<6} {size:5.0f}M {f.upload_s:6.1f}s {size / f.upload_s:6.1f} {f.upload_cpu_s:6.1f}s {server} "
            f"{down} {f.idle_rss / MB:7.0f}M {f.peak_rss / MB:7.0f}M {hwm} {(f.peak_rss - f.idle_rss) / MB:5.0f}M"
        )
    print("MB = 10^6 bytes; growth = peak RSS - idle RSS of the gateway; CPU = seconds of the upload.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the uploaded file (default 1; 2 for 2 GB)")
    parser.add_argument("--download", action="store_true", help="also fetch the file back through files.content")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        workdir = Path(folder)
        path = workdir / "input.jsonl"
        started = time.perf_counter()
        size = write_input(path, int(args.size_gb * GB))
        print(f"input file: {size / MB:,.0f} MB written in {time.perf_counter() - started:.1f} s")
        server = start_s3_server()
        try:
            bucket = server.new_bucket()
            env = server.storage_env(bucket) | S3_TEST_CREDENTIALS
            rows = [measure("s3", path, workdir, env, args.download, server.process.pid)]
            stored = server.keys(bucket)
            assert list(stored.values()) == [size], stored
        finally:
            stop_s3_server(server)
        rows.append(measure("local", path, workdir, {}, args.download))
        report(rows)


if __name__ == "__main__":
    main()
