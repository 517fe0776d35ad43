"""Every page of the dashboard rendered with AppTest against a live gateway seeded with real batches.

The assertions compare what the pages render with what the seeded batches did on the emulators
(ids, statuses, providers, counts) and with the admin API's own figures (costs, budgets, alerts).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import format as fmt
from tests.conftest import free_port
from tests.dashboard.conftest import GLOBAL_LIMIT_USD, Seeded, app_test, log_in
from tests.engine import chat_requests, submit, wait_for


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first rendered table that has ``column``."""
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no table with a {column!r} column; tables: {[list(d.value.columns) for d in at.dataframe]}")


def metric(at: AppTest, label: str) -> str:
    """The value of the metric with this label."""
    for element in at.metric:
        if element.label == label:
            return str(element.value)
    raise AssertionError(f"no metric {label!r}; metrics: {[m.label for m in at.metric]}")


def texts(at: AppTest) -> str:
    """Every markdown, caption, info, success, warning and error text of the page, joined."""
    parts = [
        e.value for kind in ("markdown", "caption", "info", "success", "warning", "error") for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def run_page(at: AppTest, page: str, **query: str) -> AppTest:
    """Open ``page`` with ``query`` in a new session: it asks for the admin key, then renders."""
    at.switch_page(page)
    for name, value in query.items():
        at.query_params[name] = value
    log_in(at)
    assert not at.exception, [e.value for e in at.exception]
    return at


def api_batch(seeded: Seeded, batch_id: str) -> dict[str, Any]:
    return seeded.admin.batch(batch_id)


# --- Jobs -------------------------------------------------------------------------------------------------


def test_jobs_lists_every_team_batch_with_status_counts_and_providers(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = log_in(app_test(monkeypatch, seeded.gateway.base_url))
    assert not at.exception, [e.value for e in at.exception]
    table = frame_with(at, "job").set_index("job")
    expected = {
        seeded.done.id: ("completed", 6, 0, 6, "gpt-4o-mini", "fastp"),
        seeded.flaky.id: ("completed", None, None, 12, "flaky-mini", "flakyp"),
        seeded.running.id: ("in progress", 0, 0, 4, "slow-mini", "slowp"),
    }
    assert set(table.index) == {f"job?batch={batch_id}" for batch_id in expected}
    assert seeded.flaky.request_counts is not None
    for batch_id, (status, succeeded, failed, total, model, provider) in expected.items():
        row = table.loc[f"job?batch={batch_id}"]
        item = api_batch(seeded, batch_id)
        assert row["status"] == status
        assert row["total"] == total
        if succeeded is not None:
            assert (row["succeeded"], row["failed"]) == (succeeded, failed)
        assert row["model"] == model
        assert row["team"] == ("globex" if batch_id == seeded.flaky.id else "acme")
        assert row["providers"] == provider and row["policy"] == item["policy"]
        assert (row["cost"], row["saved"]) == (fmt.money(item["cost_usd"]), fmt.money(item["savings_usd"]))
    done = api_batch(seeded, seeded.done.id)
    assert done["cost_usd"] > 0 and done["savings_usd"] > 0, done
    flaky = table.loc[f"job?batch={seeded.flaky.id}"]
    assert (flaky["succeeded"], flaky["failed"]) == (
        seeded.flaky.request_counts.completed,
        seeded.flaky.request_counts.failed,
    )
    assert flaky["progress"] == 1.0 and table.loc[f"job?batch={seeded.running.id}"]["progress"] == 0.0
    assert metric(at, "Jobs listed") == "3" and metric(at, "Running") == "1" and metric(at, "Completed") == "2"
    assert "Running now (1)" in [h.value for h in at.subheader]


def test_jobs_filters_by_status_and_team(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = log_in(app_test(monkeypatch, seeded.gateway.base_url))
    at.selectbox(key="jobs_status").select("completed").run()
    assert set(frame_with(at, "job")["job"]) == {f"job?batch={seeded.done.id}", f"job?batch={seeded.flaky.id}"}
    at.selectbox(key="jobs_status").select("").run()
    at.text_input(key="jobs_team").input("globex").run()
    assert list(frame_with(at, "job")["job"]) == [f"job?batch={seeded.flaky.id}"]
    at.text_input(key="jobs_team").input("").run()
    at.selectbox(key="jobs_provider").select("fastp").run()
    assert list(frame_with(at, "job")["job"]) == [f"job?batch={seeded.done.id}"]
    at.selectbox(key="jobs_provider").select("").run()
    at.selectbox(key="jobs_period").select("last hour").run()
    assert len(frame_with(at, "job")) == 3
    at.text_input(key="jobs_team").input("nobody").run()
    assert "No jobs match these filters" in texts(at)


# --- Job detail -------------------------------------------------------------------------------------------


def test_job_detail_shows_shards_on_their_provider(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/job.py", batch=seeded.done.id)
    assert at.title[0].value == f"Job {seeded.done.id}"
    assert metric(at, "Status") == "completed" and metric(at, "Answered") == "6 / 6" and metric(at, "Failed") == "0"
    shards = frame_with(at, "provider")
    assert list(shards["provider"]) == ["fastp"] and list(shards["state"]) == ["done"]
    assert list(shards["completed"]) == [6] and list(shards["requests"]) == [6]
    assert "No failed requests." in texts(at)
    assert at.button(key="cancel").disabled and at.button(key="retry").disabled
    route = [e.label for e in at.expander if e.label.startswith("route:")]
    assert route == ["route: gpt-4o-mini → fastp (6 requests, policy cheapest)"]
    assert metric(at, "Cost") == fmt.money(api_batch(seeded, seeded.done.id)["cost_usd"])


def test_job_detail_samples_errors_and_retries_the_failed_requests(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert seeded.flaky.request_counts is not None
    failed = seeded.flaky.request_counts.failed
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/job.py", batch=seeded.flaky.id)
    assert metric(at, "Failed") == str(failed)
    # The engine retried the failed requests on the same provider: each retry is shown with its cause.
    decisions = api_batch(seeded, seeded.flaky.id)["decisions"]
    retries = [d for d in decisions if d["kind"] == "retry"]
    assert retries and len([e for e in at.expander if e.label.startswith("retry:")]) == len(retries)
    assert all(f"**Cause:** {d['cause']}" in texts(at) for d in retries)
    sample = frame_with(at, "custom_id")
    errors = seeded.admin.file_content(str(seeded.flaky.error_file_id)).decode().splitlines()
    assert len(sample) == len(errors) == failed
    assert set(sample["custom_id"]) == {json.loads(line)["custom_id"] for line in errors}
    assert all(str(cid).startswith("flaky-") for cid in sample["custom_id"])

    at.button(key="retry").click().run()
    assert not at.exception, [e.value for e in at.exception]
    notice = next(s.value for s in at.success if "Retry created" in s.value)
    retry_id = notice.rsplit(" ", 1)[1]
    retry = seeded.admin.batch(retry_id)
    assert retry["team_id"] == api_batch(seeded, seeded.flaky.id)["team_id"]
    assert retry["metadata"]["retry_of"] == seeded.flaky.id
    deadline = time.monotonic() + 30
    while retry["status"] not in fmt.FINISHED and time.monotonic() < deadline:
        time.sleep(0.2)
        retry = seeded.admin.batch(retry_id)
    assert retry["request_counts"]["total"] == failed, retry


def test_job_detail_cancels_a_running_job(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/job.py", batch=seeded.running.id)
    assert metric(at, "Status") == "in progress"
    assert list(frame_with(at, "provider")["provider"]) == ["slowp"]
    at.button(key="cancel").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert api_batch(seeded, seeded.running.id)["status"] in ("cancelling", "cancelled")
    assert any("Cancel requested" in s.value for s in at.success)


def test_job_detail_unknown_id_is_a_clear_message(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/job.py", batch="batch_nope")
    assert "No such batch: 'batch_nope'" in texts(at)


# --- Spend ------------------------------------------------------------------------------------------------


def test_spend_shows_cost_and_savings_by_provider_and_team(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/spend.py")
    totals = seeded.admin.spend(group_by="provider", bucket="hour", since=int(time.time()) - 86400)["totals"]
    assert totals["cost_usd"] > 0
    assert metric(at, "Spent") == fmt.money(totals["cost_usd"])
    assert metric(at, "Saved") == fmt.money(totals["savings_usd"])
    assert metric(at, "Requests") == f"{totals['requests']:,}"
    by_provider = frame_with(at, "key").set_index("key")
    assert seeded.flaky.request_counts is not None
    assert by_provider.loc["fastp", "requests"] == 6
    assert by_provider.loc["flakyp", "requests"] == seeded.flaky.request_counts.completed
    at.segmented_control(key="spend_group").set_value("team").run()
    assert set(frame_with(at, "key")["key"]) == {"acme", "globex"}


# --- Alerts & budgets -------------------------------------------------------------------------------------


def test_alerts_newest_first_and_acknowledge(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    deadline = time.monotonic() + 20
    while len(seeded.admin.alerts(acknowledged=False)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    open_alerts = seeded.admin.alerts(acknowledged=False)
    assert len(open_alerts) >= 2, open_alerts
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/alerts.py")
    rendered = [m.value for m in at.markdown if m.value.startswith(":material/") and "UTC" in m.value]
    assert len(rendered) == len(open_alerts)
    page_text = texts(at)
    for alert in open_alerts:
        assert alert["message"] in page_text
    first = open_alerts[0]
    at.button(key=f"ack_{first['id']}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert first["id"] not in {a["id"] for a in seeded.admin.alerts(acknowledged=False)}
    assert first["message"] not in texts(at)


def test_budgets_show_use_and_thresholds_and_can_be_set(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/alerts.py")
    budgets = frame_with(at, "budget").set_index("budget")
    row = budgets.loc["global / day"]
    assert row["limit"] == fmt.money(GLOBAL_LIMIT_USD, 2) and row["thresholds"] == "50%, 100%"
    assert row["next threshold"] == "all passed"
    assert any("Budget global / day is at" in w.value for w in at.warning)
    acme = next(b for b in seeded.admin.budgets() if b["scope"] == "team:acme")
    assert 0 < acme["utilisation"] < 0.5
    row = budgets.loc["team:acme / month"]
    assert row["use"] == fmt.percent(acme["utilisation"]) and row["spent"] == fmt.money(acme["spent_usd"])
    assert (row["thresholds"], row["next threshold"]) == ("50%, 80%", "50%")
    assert not any("team:acme" in w.value for w in at.warning)

    at.text_input(key="budget_scope").input("team:globex")
    at.selectbox(key="budget_period").select("month")
    at.number_input(key="budget_limit").set_value(25.0)
    at.text_input(key="budget_thresholds").input("40, 90")
    next(b for b in at.button if b.label == "Save budget").click().run()
    assert not at.exception, [e.value for e in at.exception]
    saved = {(b["scope"], b["period"]): b for b in seeded.admin.budgets()}
    assert saved[("team:globex", "month")]["limit_usd"] == 25.0
    assert saved[("team:globex", "month")]["thresholds"] == [0.4, 0.9]
    row = frame_with(at, "budget").set_index("budget").loc["team:globex / month"]
    assert row["limit"] == "$25.00" and row["thresholds"] == "40%, 90%"

    at.text_input(key="budget_thresholds").input("lots")
    next(b for b in at.button if b.label == "Save budget").click().run()
    assert "Thresholds must be numbers" in texts(at)


# --- Webhooks ---------------------------------------------------------------------------------------------


def test_webhooks_register_shows_the_secret_once_and_lists_deliveries(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/webhooks.py")
    at.text_input(key="webhook_team").input("globex")
    at.text_input(key="webhook_url").input(f"http://127.0.0.1:{free_port()}/nobody-listens")
    at.multiselect(key="webhook_events").set_value(["batch.completed"])
    at.button[0].click().run()  # the form's Register button
    assert not at.exception, [e.value for e in at.exception]
    [secret] = [c.value for c in at.code]
    assert secret.startswith("whsec_") and any("shown this once" in s.value for s in at.success)
    [registered] = [e for e in seeded.admin.webhook_endpoints() if e["team"] == "globex"]
    assert registered["event_types"] == ["batch.completed"] and secret not in str(registered)

    # A completed batch of the team: its event waits for a receiver that never answers.
    client = seeded.gateway.client(seeded.keys["globex"])
    wait_for(client, submit(client, chat_requests(1, prefix="hook")).id, timeout=30)
    deadline = time.monotonic() + 30
    while not seeded.admin.webhook_endpoint(registered["id"])["recent_events"] and time.monotonic() < deadline:
        time.sleep(0.2)
    at.run()
    assert not at.code, "the secret was shown again"
    endpoints = frame_with(at, "endpoint").set_index("endpoint")
    assert endpoints.loc[registered["id"], "team"] == "globex"
    assert endpoints.loc[registered["id"], "events"] == "completed"
    assert endpoints.loc[registered["id"], ["delivered", "pending", "gave up"]].tolist() == [0, 1, 0]
    at.selectbox(key="webhook_events_of").set_value(registered["id"]).run()
    events = frame_with(at, "attempts")
    assert events["event"].tolist() == ["batch.completed"] and events["state"].tolist() == ["pending"]
    assert events["last answer"].tolist() == ["no answer"]


# --- Providers --------------------------------------------------------------------------------------------


def test_providers_show_kind_capacity_and_models(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page(app_test(monkeypatch, seeded.gateway.base_url), "views/providers.py")
    table = frame_with(at, "provider").set_index("provider")
    assert list(table.index) == ["fastp", "flakyp", "slowp"]
    assert set(table["kind"]) == {"openai"}
    assert table.loc["fastp", "models"] == "gpt-4o-mini" and table.loc["slowp", "models"] == "slow-mini"
    api = {p["name"]: p for p in seeded.admin.providers()}
    for name in table.index:
        cap = api[name].get("max_batches_in_flight") or api[name]["limits"]["max_batches_in_flight"]
        assert str(table.loc[name, "in flight"]).endswith(f"/ {cap}")
    assert metric(at, "Providers") == "3" and metric(at, "Circuit open") == "0"
    assert set(table["circuit"]) == {"closed (healthy)"}
    turnaround = frame_with(at, "p90").set_index("provider")
    assert turnaround.loc["fastp", "model"] == "gpt-4o-mini" and turnaround.loc["fastp", "samples"] >= 1
    prices = frame_with(at, "batch input").set_index("provider")
    assert (prices.loc["fastp", "batch input"], prices.loc["fastp", "batch output"]) == ("$0.075", "$0.300")
    assert prices.loc["fastp", "source"] == "platform.openai.com/docs/pricing"
