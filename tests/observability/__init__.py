"""Tests of the metrics, the alert rules and the Grafana dashboard, with Debian's Prometheus binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.simulator import SimulatorCluster
from tests.conftest import ENGINE_ENV, loopback

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "helm" / "batch-gateway" / "files" / "alert-rules.yml"
RULES_TEST_FILE = Path(__file__).with_name("rules_test.yml")
DASHBOARD_FILE = ROOT / "helm" / "batch-gateway" / "dashboards" / "batch-gateway.json"
SECRET = "sk-emulator-secret-0123456789"
"""The emulated providers' API key: it must never appear in an exposition."""


def require_binary(name: str) -> str:
    """Path of a Prometheus binary; skipped when absent locally, a failure in CI (``CI=true``)."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is not on PATH; CI installs it with Debian's 'prometheus' package (.ci/run)")
    pytest.skip(f"{name} is not on PATH (install Debian's 'prometheus' package); CI never skips this")


def check_metrics(promtool: str, exposition: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition (lint problems are printed, and fail the check)."""
    return subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60, check=False
    )


def scrape(base_url: str) -> str:
    """The text of ``GET /metrics``, without any credentials."""
    response = loopback.get(f"{base_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(exposition: str, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the exposition does not have it."""
    return samples(exposition).get((name, frozenset(labels.items())))


def provider_file(cluster: SimulatorCluster, folder: Path) -> dict[str, str]:
    """Gateway env for providers on the emulators, priced as OpenAI's gpt-4o-mini batch offer by the catalog.

    ``main`` serves gpt-4o-mini (no delay), ``spare`` llama-3.3-70b, and ``serial`` serves model ``serial``
    two requests per shard, one shard at a time, 5 s each.
    """
    providers: dict[str, dict[str, Any]] = {
        "main": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
        "spare": {"emulator": "other", "models": {"llama-3.3-70b": "llama-3.3-70b"}},
        "serial": {
            "emulator": "slow",
            "models": {"serial": "gpt-4o-mini"},
            "limits": {"max_requests_per_batch": 2, "max_batches_in_flight": 1},
        },
    }
    lines: list[str] = []
    for name, spec in providers.items():
        lines += [
            f"[providers.{name}]",
            'kind = "openai"',
            'catalog_provider = "openai"',
            'api_key_env = "EMULATOR_API_KEY"',
            f"base_url = {json.dumps(cluster.base_url(spec['emulator']))}",
            "models = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in spec["models"].items()) + " }",
            f"[providers.{name}.limits]",
            *(f"{key} = {json.dumps(v)}" for key, v in spec.get("limits", {}).items()),
            "",
        ]
    path = folder / "providers.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return {"BATCHGW_CONFIG_FILE": str(path), "EMULATOR_API_KEY": SECRET, **ENGINE_ENV}
