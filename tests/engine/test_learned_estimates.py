"""Estimates learn: a team's second run of a similar workload is estimated within 15% of its actual cost, its first
run (no history: the built-in default output) far from it. The same measurement as ``tests.bench.bench_estimate``,
smaller, on every database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.simulator import SimulatorCluster
from tests.bench.bench_estimate import TARGET_ERROR, report, run_once, workload
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import reset


def test_the_second_run_of_a_workload_is_estimated_within_the_target(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    reset(simulator, "fast")
    providers = {"openai": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
    gateway: GatewayProcess = gateway_factory(simulated_provider_env(simulator, tmp_path, providers)).start()
    key = gateway.create_key("labels")
    client = gateway.client(key)
    first = run_once(client, gateway.base_url, key, workload(300, seed=1, prefix="first"))
    second = run_once(client, gateway.base_url, key, workload(300, seed=2, prefix="second"))
    assert report([first, second])  # prints both runs' error
    assert first.basis.startswith("no history") and second.basis == "from 300 past requests"
    assert abs(second.error) <= TARGET_ERROR
    assert first.error > 1.0  # the fixed guess of 256 output tokens is far above these short answers
    assert second.low_usd <= second.estimate_usd <= second.high_usd
