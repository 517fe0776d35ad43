"""gateway.metrics: the recording helpers count each event once, and the exposition joins the process's
counters with a database snapshot's gauges."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.db.stats import BudgetUse, MetricsSnapshot


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def families(exposition: bytes) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    found: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            found.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return found


def test_record_shard_collected_counts_every_figure_once() -> None:
    labels = {"provider": "unit-p", "model": "unit-m", "team": "unit-t"}
    before = {o: sample("batchgw_requests_total", provider="unit-p", outcome=o) for o in metrics.REQUEST_OUTCOMES}
    spend = sample("batchgw_spend_usd_total", reason="served", **labels)
    retries = sample("batchgw_request_retries_total", provider="unit-p")
    metrics.record_shard_collected(
        **labels,
        succeeded=7,
        failed=2,
        expired=1,
        cancelled=0,
        retried=3,
        input_tokens=100,
        output_tokens=40,
        cost_usd=0.25,
        list_cost_usd=0.5,
        turnaround_s=90.0,
    )
    after = {o: sample("batchgw_requests_total", provider="unit-p", outcome=o) for o in metrics.REQUEST_OUTCOMES}
    assert {o: after[o] - before[o] for o in after} == {
        "succeeded": 7,
        "failed": 2,
        "expired": 1,
        "cancelled": 0,
    }
    assert sample("batchgw_request_retries_total", provider="unit-p") - retries == 3  # its own series
    assert sample("batchgw_spend_usd_total", reason="served", **labels) - spend == pytest.approx(0.25)
    assert sample("batchgw_savings_usd_total", **labels) == pytest.approx(0.25)
    assert sample("batchgw_sync_baseline_usd_total", **labels) == pytest.approx(0.5)
    tokens = {"provider": "unit-p", "model": "unit-m"}
    assert sample("batchgw_tokens_total", direction="input", **tokens) == 100
    assert sample("batchgw_tokens_total", direction="output", **tokens) == 40
    assert sample("batchgw_shard_turnaround_seconds_bucket", provider="unit-p", le="60.0") == 0
    assert sample("batchgw_shard_turnaround_seconds_bucket", provider="unit-p", le="120.0") == 1


def test_savings_never_go_negative_and_missing_turnaround_is_not_observed() -> None:
    labels = {"provider": "unit-sync", "model": "unit-m", "team": "unit-t"}
    metrics.record_shard_collected(
        **labels,
        succeeded=1,
        failed=0,
        expired=0,
        cancelled=0,
        retried=0,
        input_tokens=1,
        output_tokens=1,
        cost_usd=0.5,
        list_cost_usd=0.4,
        turnaround_s=None,
    )
    assert sample("batchgw_savings_usd_total", **labels) == 0
    assert sample("batchgw_shard_turnaround_seconds_count", provider="unit-sync") == 0


def test_failover_to_nowhere_is_labelled_none() -> None:
    metrics.record_failover("unit-a", None, "provider_down")
    metrics.record_failover("unit-a", "unit-b", "expired")
    assert sample("batchgw_failovers_total", from_provider="unit-a", to_provider="none", cause="provider_down") == 1
    assert sample("batchgw_failovers_total", from_provider="unit-a", to_provider="unit-b", cause="expired") == 1


def test_batch_turnaround_and_alerts() -> None:
    metrics.record_batch_finished("unit-batch", 3 * 3600.0)
    assert sample("batchgw_batch_turnaround_seconds_bucket", provider="unit-batch", le="7200.0") == 0
    assert sample("batchgw_batch_turnaround_seconds_bucket", provider="unit-batch", le="14400.0") == 1
    before = sample("batchgw_alerts_fired_total", kind="anomaly")
    metrics.record_alert_fired("anomaly")
    assert sample("batchgw_alerts_fired_total", kind="anomaly") == before + 1


def test_render_joins_counters_and_snapshot_gauges() -> None:
    snapshot = MetricsSnapshot(
        batches={"in_progress": 2},
        shards={("queued", "p1"): 3, ("done", "p2"): 1},
        circuits={"p2": "open", "p3": "half_open"},
        budgets=[
            BudgetUse(
                scope="team:acme",
                period="day",
                limit_usd=10.0,
                spent_usd=12.5,
                utilization=1.25,
                reserved_usd=1.5,
                hard=True,
            ),
            BudgetUse(
                scope="global", period="month", limit_usd=100.0, spent_usd=40.0, utilization=0.4, reserved_usd=20
            ),
        ],
        held_batches={"canary": 2},
        oldest_queued_shard_age_s=42.0,
        batches_past_window=1,
    )
    found = families(metrics.render(snapshot, ["p1", "p2", "p3", "idle"]))
    assert found["batchgw_database_up"] == {frozenset(): 1}
    assert found["batchgw_batches"][frozenset({("status", "in_progress")})] == 2
    assert found["batchgw_batches"][frozenset({("status", "completed")})] == 0
    assert found["batchgw_shards"][frozenset({("state", "queued"), ("provider", "p1")})] == 3
    assert found["batchgw_shards"][frozenset({("state", "queued"), ("provider", "idle")})] == 0
    up = {dict(labels)["provider"]: v for labels, v in found["batchgw_provider_up"].items()}
    assert up == {"p1": 1, "p2": 0, "p3": 1, "idle": 1}
    circuit = found["batchgw_provider_circuit_state"]
    assert circuit[frozenset({("provider", "p3"), ("state", "half_open")})] == 1
    assert circuit[frozenset({("provider", "p3"), ("state", "closed")})] == 0
    budget = frozenset({("scope", "team:acme"), ("period", "day"), ("hard", "true")})
    assert found["batchgw_budget_utilization_ratio"][budget] == 1.25
    assert found["batchgw_budget_spent_usd"][budget] == 12.5
    assert found["batchgw_budget_limit_usd"][budget] == 10.0
    assert found["batchgw_budget_reserved_usd"][budget] == 1.5
    assert found["batchgw_budget_remaining_usd"][budget] == 0  # over: never negative
    soft = frozenset({("scope", "global"), ("period", "month"), ("hard", "false")})
    assert found["batchgw_budget_remaining_usd"][soft] == 40.0
    held = {dict(labels)["reason"]: v for labels, v in found["batchgw_batches_held"].items()}
    assert held == {"canary": 2, "budget": 0}
    assert found["batchgw_oldest_queued_shard_age_seconds"] == {frozenset(): 42.0}
    assert found["batchgw_batches_past_window"] == {frozenset(): 1}
    assert found["batchgw_requests_total"][frozenset({("provider", "idle"), ("outcome", "failed")})] == 0
    assert found["batchgw_request_retries_total"][frozenset({("provider", "idle")})] == 0
    assert found["batchgw_alert_webhook_deliveries_total"][frozenset({("outcome", "gave_up")})] >= 0
    assert "process_cpu_seconds_total" in found  # the process's own collectors are part of the exposition
    assert not any(name.endswith("_created") for name in found)


def test_without_a_database_only_counters_and_database_down() -> None:
    found = families(metrics.render(None, ["p1"]))
    assert found["batchgw_database_up"] == {frozenset(): 0}
    assert "batchgw_batches" not in found and "batchgw_provider_up" not in found


def test_every_defined_metric_is_exposed_and_lint_clean() -> None:
    exposition = metrics.render(MetricsSnapshot(), ["p1"])
    text = exposition.decode()
    for name in metrics.metric_names():
        assert f"# TYPE {name}" in text, name
    promtool = shutil.which("promtool")
    if promtool is None and os.environ.get("CI", "").lower() != "true":
        pytest.skip("promtool is not on PATH (Debian package 'prometheus')")
    assert promtool, "CI installs promtool (.ci/run)"
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_what_an_abandoned_provider_batch_billed_is_spend_with_its_own_reason() -> None:
    labels = {"provider": "unit-abandoned", "model": "unit-m", "team": "unit-t"}
    served = sample("batchgw_spend_usd_total", reason="served", **labels)
    metrics.record_abandoned_spend(**labels, cost_usd=0.125)
    assert sample("batchgw_spend_usd_total", reason="abandoned", **labels) == pytest.approx(0.125)
    assert sample("batchgw_spend_usd_total", reason="served", **labels) == served
