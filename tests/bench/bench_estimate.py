"""How close the estimate comes to the actual cost, before and after the gateway has learned a team's workload.

Run ``python -m tests.bench.bench_estimate [--requests N] [--runs R]`` (default 2,000 requests, 2 runs). It starts
an emulated OpenAI-protocol provider in this process and ``batchgw serve`` on a temporary folder and SQLite, then,
``R`` times for one team, draws a fresh sample of the same kind of workload (review labelling: a system prompt,
a review of varying length, no ``max_tokens`` on three requests out of four and 16, 32 or 64 on the others),
asks ``POST /v1/estimates`` for its cost (with its p50-p90 range and basis), runs it as a batch and compares the
estimate with what the ledger recorded. The first run has no history (the built-in 256 output tokens per
request, capped by ``max_tokens``); later runs estimate from what the earlier ones actually used.

The emulator answers with an echo of the review, so outputs are short (10 to 52 tokens) and vary with the input:
the kind of workload where a fixed output guess is far off. Error = (estimate - actual) / actual.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import GatewayProcess, free_port, simulated_provider_env

TARGET_ERROR = 0.15
EMULATOR = "bench"
SYSTEM = (
    "You label product reviews. Answer with one word: positive, negative or mixed, then a short reason "
    "quoting the review."
)
VOCABULARY = (
    "battery screen fast slow broke great terrible cheap expensive delivery arrived late early works perfectly "
    "stopped after week month love hate returned refund support helpful rude sound quality bright dim heavy "
    "light sturdy flimsy recommend never again five stars one star okay decent"
)
WORDS = tuple(VOCABULARY.split())


def workload(count: int, seed: int, prefix: str = "r") -> list[dict[str, Any]]:
    """``count`` review-labelling requests drawn with ``seed`` (the same kind of workload for every seed)."""
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        words = max(3, int(rng.lognormvariate(3.0, 0.8)))
        review = " ".join(rng.choice(WORDS) for _ in range(words))
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": review}],
        }
        if rng.random() < 0.25:
            body["max_tokens"] = rng.choice((16, 32, 64))
        lines.append(
            {"custom_id": f"{prefix}-{index:06d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return lines


@dataclass(frozen=True)
class Run:
    """One run's estimate and actual cost."""

    requests: int
    basis: str
    estimate_usd: float
    low_usd: float
    high_usd: float
    actual_usd: float

    @property
    def error(self) -> float:
        """(estimate - actual) / actual."""
        return (self.estimate_usd - self.actual_usd) / self.actual_usd


def run_once(client: openai.OpenAI, base_url: str, key: str, requests: list[dict[str, Any]]) -> Run:
    """Estimate the requests through the gateway, run them as a batch, and return both figures."""
    content = "".join(json.dumps(r) + "\n" for r in requests).encode()
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    answer = httpx.post(
        f"{base_url}/v1/estimates", json={"file_id": file.id}, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    answer.raise_for_status()
    estimate = answer.json()
    [chosen] = [row for row in estimate["data"] if row["rank"] == 1]
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 600
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch.id} did not finish: {batch.status}")
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    if batch.status != "completed":
        raise RuntimeError(f"batch {batch.id} ended {batch.status}: {batch.errors}")
    low, high = estimate["chosen_cost_range_usd"]
    return Run(
        requests=len(requests),
        basis=chosen["basis"],
        estimate_usd=float(estimate["chosen_cost_usd"]),
        low_usd=float(low),
        high_usd=float(high),
        actual_usd=float((batch.metadata or {})["gateway_cost_usd"]),
    )


def report(runs: list[Run]) -> bool:
    """Print one line per run; True when every run after the first is within the target."""
    print(f"{'run':>3}  {'requests':>8}  {'estimate':>10}  {'p50-p90 range':>21}  {'actual':>10}  {'error':>7}  basis")
    for number, run in enumerate(runs, 1):
        print(
            f"{number:>3}  {run.requests:>8,}  ${run.estimate_usd:>9.6f}  ${run.low_usd:.6f}-${run.high_usd:.6f}  "
            f"${run.actual_usd:>9.6f}  {run.error:>+7.1%}  {run.basis}"
        )
    met = all(abs(run.error) <= TARGET_ERROR for run in runs[1:])
    print(f"target: runs after the first within {TARGET_ERROR:.0%} of the actual cost: {'met' if met else 'MISSED'}")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    cluster = SimulatorCluster([ProviderSpec(name=EMULATOR, models=["gpt-4o-mini"])], control_port=None)
    cluster.start()
    gateway = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-estimate-") as folder:
            workdir = Path(folder)
            providers = {"openai": {"emulator": EMULATOR, "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
            env = simulated_provider_env(cluster, workdir, providers)
            gateway = GatewayProcess(
                data_dir=workdir, database_url=f"sqlite:///{workdir / 'gateway.db'}", port=free_port(), extra_env=env
            ).start()
            key = gateway.create_key("bench")
            client = gateway.client(key, timeout=600)
            runs = [
                run_once(client, gateway.base_url, key, workload(args.requests, seed, prefix=f"run{seed}"))
                for seed in range(1, args.runs + 1)
            ]
            gateway.stop()
            return 0 if report(runs) else 1
    finally:
        if gateway is not None:
            gateway.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
