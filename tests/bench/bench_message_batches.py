"""The Anthropic-compatible endpoint against the OpenAI one (the floor), side by side on one gateway.

Run ``python -m tests.bench.bench_message_batches [--requests N]`` (default 100,000). It starts an
emulated OpenAI-protocol provider in this process (answering at once), the API as ``batchgw serve
--no-worker`` and a ``batchgw worker``, on a temporary data folder and SQLite, with default settings.
The same N chat requests then go through both doors:

* OpenAI: the JSONL file uploaded with the official ``openai`` SDK, the batch created; the output file
  downloaded once completed.
* Anthropic: one ``POST /v1/messages/batches`` body (``{"requests": [...]}``, written to disk first and
  streamed from it, as a large client would send it); the results streamed from ``results_url`` once
  ended.

It prints, per door: the intake time (upload + create, or the create call) and its throughput, the API
process's peak RSS during intake (sampled every 20 ms), the time from intake to the end of the job, the
result download time and the result lines counted. MB means 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.settings import WorkerSettings
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.bench import RssSampler
from tests.conftest import GatewayProcess, free_port, simulated_provider_env
from tests.engine import CHAT, worker_process

MB = 1_000_000
EMULATOR = "bench"


@dataclass
class Door:
    """What one door measured."""

    name: str
    body_mb: float
    intake_s: float
    intake_rss: int
    job_s: float
    results_s: float
    result_lines: int


def params(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 32,
        "system": "You answer in one short sentence.",
        "messages": [{"role": "user", "content": f"Question {i}: what is {i % 97} times {i % 89}?"}],
    }


def write_openai(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            p = params(i)
            messages = [{"role": "system", "content": p["system"]}, *p["messages"]]
            body = {"model": p["model"], "max_tokens": p["max_tokens"], "messages": messages}
            out.write(json.dumps({"custom_id": f"req-{i:07d}", "method": "POST", "url": CHAT, "body": body}) + "\n")


def write_anthropic(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write('{"requests": [')
        for i in range(count):
            out.write(("," if i else "") + json.dumps({"custom_id": f"req-{i:07d}", "params": params(i)}))
        out.write("]}")


def timed_intake(pid: int, call: Callable[[], str]) -> tuple[str, float, int]:
    sampler = RssSampler(pid, interval=0.02)
    sampler.start()
    started = time.monotonic()
    created = call()
    return created, time.monotonic() - started, sampler.stop()


def wait(check: Callable[[], bool], timeout: float = 1800) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise RuntimeError("the job did not end in time")
        time.sleep(0.1)
    return time.monotonic() - started


def openai_door(api: GatewayProcess, key: str, pid: int, path: Path) -> Door:
    client = api.client(key, timeout=1800)

    def intake() -> str:
        with path.open("rb") as handle:
            file = client.files.create(file=("input.jsonl", handle), purpose="batch")
        return client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h").id

    batch_id, intake_s, rss = timed_intake(pid, intake)
    job_s = wait(lambda: client.batches.retrieve(batch_id).status in ("completed", "failed", "expired", "cancelled"))
    batch = client.batches.retrieve(batch_id)
    if batch.status != "completed" or batch.output_file_id is None:
        raise RuntimeError(f"the OpenAI batch ended {batch.status}: {batch.errors}")
    started = time.monotonic()
    lines = client.files.content(batch.output_file_id).content.count(b"\n")
    return Door("OpenAI (floor)", path.stat().st_size / MB, intake_s, rss, job_s, time.monotonic() - started, lines)


def anthropic_door(api: GatewayProcess, key: str, pid: int, path: Path) -> Door:
    headers = {"x-api-key": key}
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=1800) as http:

        def intake() -> str:
            with path.open("rb") as handle:
                response = http.post("/v1/messages/batches", content=handle)
            if response.status_code != 200:
                raise RuntimeError(f"create answered {response.status_code}: {response.text[:500]}")
            return str(response.json()["id"])

        batch_id, intake_s, rss = timed_intake(pid, intake)
        job_s = wait(lambda: http.get(f"/v1/messages/batches/{batch_id}").json()["processing_status"] == "ended")
        started = time.monotonic()
        lines = 0
        with http.stream("GET", f"/v1/messages/batches/{batch_id}/results") as results:
            for chunk in results.iter_bytes():
                lines += chunk.count(b"\n")
        results_s = time.monotonic() - started
    return Door("Anthropic", path.stat().st_size / MB, intake_s, rss, job_s, results_s, lines)


def measure(count: int, workdir: Path) -> list[Door]:
    cluster = SimulatorCluster([ProviderSpec(name=EMULATOR, models=["gpt-4o-mini"])], control_port=None)
    cluster.start()
    api = worker = None
    try:
        env = simulated_provider_env(
            cluster, workdir, {"bench": {"emulator": EMULATOR, "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
        )
        defaults = WorkerSettings()
        env |= {
            "BATCHGW_WORKER__POLL_INTERVAL_S": str(defaults.poll_interval_s),
            "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": str(defaults.provider_poll_min_s),
            "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": str(defaults.provider_poll_max_s),
        }
        api = GatewayProcess(
            data_dir=workdir, database_url=f"sqlite:///{workdir / 'gateway.db'}", port=free_port(), extra_env=env
        )
        api.start("serve", "--no-worker")
        worker = worker_process(api, "worker").start("worker")
        assert api.process is not None
        key = api.create_key("bench")
        openai_path, anthropic_path = workdir / "input.jsonl", workdir / "message-batch.json"
        write_openai(openai_path, count)
        write_anthropic(anthropic_path, count)
        time.sleep(3.0)  # the worker's start-up is not the job's time
        return [
            openai_door(api, key, api.process.pid, openai_path),
            anthropic_door(api, key, api.process.pid, anthropic_path),
        ]
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop()
        cluster.stop()


def report(count: int, doors: list[Door]) -> None:
    rows = [
        ("requests", *(f"{count:,}" for _ in doors)),
        ("request body", *(f"{d.body_mb:,.1f} MB" for d in doors)),
        (
            "intake (upload + create / create)",
            *(f"{d.intake_s:.2f} s, {d.body_mb / d.intake_s:,.1f} MB/s" for d in doors),
        ),
        ("API peak RSS during intake", *(f"{d.intake_rss / MB:,.1f} MB" for d in doors)),
        ("intake to job ended", *(f"{d.job_s:.2f} s" for d in doors)),
        ("results download", *(f"{d.results_s:.2f} s" for d in doors)),
        ("result lines", *(f"{d.result_lines:,}" for d in doors)),
    ]
    widths = [max(len(row[i]) for row in [("", *(d.name for d in doors)), *rows]) for i in range(len(doors) + 1)]
    for row in [("", *(d.name for d in doors)), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batchgw-bench-") as folder:
        doors = measure(options.requests, Path(folder))
    report(options.requests, doors)
    return 0 if all(d.result_lines == options.requests for d in doors) else 1


if __name__ == "__main__":
    sys.exit(main())
