"""The provider emulator's own cost: the same batches one after another and side by side.

Run ``python -m tests.bench.bench_emulator [--jobs N] [--requests M] [--rounds R]`` (default six batches of
50,000 chat requests, three rounds). One OpenAI-protocol emulator answering at once runs in a process of its
own, as in :mod:`tests.bench.bench_floor`. Each round runs the N batches twice, interleaved: one after another
(what :mod:`tests.bench.bench_floor`'s floor does with a job over the provider's limit) and all at once (what
the gateway does with the same job's shards). Each batch is uploaded, created, polled every 50 ms and its
output downloaded with the official ``openai`` client.

Printed per run: wall time, the emulator process's user and system CPU seconds, and its voluntary context
switches. The gateway's ratio in :mod:`tests.bench.bench_floor` is only as fair as these two ways cost the
emulator the same: every CPU-second the emulator spends more on batches side by side counts against the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import openai
import psutil

from tests.bench import emulator_process
from tests.bench.bench_engine import CHAT, write_input

POLL_S = 0.05
TERMINAL = ("completed", "failed", "expired", "cancelled")


async def run_batch(client: openai.AsyncOpenAI, path: Path) -> int:
    """Upload, create, wait for and download one batch; the output's size in bytes."""
    with path.open("rb") as handle:
        uploaded = await client.files.create(file=handle, purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    while batch.status not in TERMINAL:
        await asyncio.sleep(POLL_S)
        batch = await client.batches.retrieve(batch.id)
    if batch.status != "completed" or batch.output_file_id is None:
        raise RuntimeError(f"batch {batch.id} ended {batch.status}")
    return len((await client.files.content(batch.output_file_id)).content)


async def measure(
    client: openai.AsyncOpenAI, emulator: psutil.Process, path: Path, jobs: int, together: bool
) -> dict[str, float]:
    """Run ``jobs`` batches of ``path``, all at once or one after another; wall, CPU and context switches."""
    cpu, switches, started = emulator.cpu_times(), emulator.num_ctx_switches(), time.monotonic()
    if together:
        await asyncio.gather(*(run_batch(client, path) for _ in range(jobs)))
    else:
        for _ in range(jobs):
            await run_batch(client, path)
    after = emulator.cpu_times()
    return {
        "wall": time.monotonic() - started,
        "user": after.user - cpu.user,
        "system": after.system - cpu.system,
        "switches": emulator.num_ctx_switches().voluntary - switches.voluntary,
    }


async def main(jobs: int, requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as folder:
        path = Path(folder) / "input.jsonl"
        size = write_input(path, requests)
        print(f"{jobs} batches of {requests:,} requests ({size / 1e6:.1f} MB each), {rounds} rounds")
        with emulator_process(Path(folder), "floor", ["gpt-4o-mini"]) as emulator:
            process = psutil.Process(emulator.pid)
            client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="bench", max_retries=0, timeout=300)
            runs: dict[str, list[dict[str, float]]] = {"one after another": [], "side by side": []}
            for round_ in range(1, rounds + 1):
                for way, together in (("one after another", False), ("side by side", True)):
                    run = await measure(client, process, path, jobs, together)
                    runs[way].append(run)
                    print(
                        f"  round {round_}, {way:>17}: wall {run['wall']:6.2f} s,"
                        f" emulator CPU user {run['user']:5.2f} s + system {run['system']:4.2f} s,"
                        f" {run['switches']:,.0f} voluntary context switches",
                        flush=True,
                    )
            await client.close()
        print("medians:")
        alone = statistics.median(r["user"] + r["system"] for r in runs["one after another"])
        for way, measured in runs.items():
            cpu = statistics.median(r["user"] + r["system"] for r in measured)
            wall = statistics.median(r["wall"] for r in measured)
            print(f"  {way:>17}: wall {wall:6.2f} s, emulator CPU {cpu:5.2f} s ({cpu / alone:.2f}x one after another)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6, help="batches per run (default 6)")
    parser.add_argument("--requests", type=int, default=50_000, help="requests per batch (default 50,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both ways (default 3)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.requests, arguments.rounds))
