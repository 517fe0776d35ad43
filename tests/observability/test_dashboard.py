"""The Grafana dashboard: valid JSON that imports without edits, and queries only metrics the gateway defines."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import metrics
from tests.observability import DASHBOARD_FILE

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$provider": ".*", "$team": ".*"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def test_datasource_is_a_template_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for name in ("provider", "team"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    text = DASHBOARD_FILE.read_text(encoding="utf-8")
    assert "DS_PROMETHEUS" not in text and '"__inputs"' not in text  # nothing to fill in at import


def test_layout_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "batch-gateway" and dashboard["title"]
    assert "id" not in dashboard  # Grafana assigns it; a fixed id breaks importing into another instance
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_queries_use_only_defined_metrics(dashboard: dict[str, Any]) -> None:
    defined = metrics.metric_names()
    used: set[str] = set()
    for expr in expressions(dashboard):
        names = set(re.findall(r"\bbatchgw_[a-z_]+", expr))
        assert names, expr
        used |= {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in names}
    assert used <= defined, used - defined
    # The views the dashboard promises: spend, savings, budgets, turnaround, failovers, provider health, errors.
    for needed in (
        "batchgw_spend_usd",
        "batchgw_savings_usd",
        "batchgw_budget_utilization_ratio",
        "batchgw_shard_turnaround_seconds",
        "batchgw_batch_turnaround_seconds",
        "batchgw_failovers",
        "batchgw_provider_up",
        "batchgw_requests",
    ):
        assert needed in used, needed
    joined = "\n".join(expressions(dashboard))
    for grouping in ("sum by (provider)", "sum by (model)", "sum by (team)"):
        assert f"{grouping} (rate(batchgw_spend_usd_total" in joined, grouping
    assert "histogram_quantile(0.9, sum by (le, provider) (rate(batchgw_shard_turnaround_seconds_bucket" in joined
    # Money the operators plan with: reservations, forecasts, holds, retries apart from outcomes, alert delivery.
    for needed in (
        "batchgw_budget_reserved_usd",
        "batchgw_budget_remaining_usd",
        "predict_linear(batchgw_budget_spent_usd",
        "batchgw_batches_held",
        "batchgw_request_retries_total",
        "batchgw_alert_webhook_deliveries_total",
    ):
        assert needed in joined, needed


def test_queries_are_valid_promql(dashboard: dict[str, Any], promtool: str, tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, parses as a recording rule for promtool."""
    rules = []
    for index, expr in enumerate(expressions(dashboard)):
        for variable, replacement in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, replacement)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
