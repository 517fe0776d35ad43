"""``GET /metrics`` of a real gateway: counters after real batches on the emulator, state gauges read from
the database, and an exposition that ``promtool check metrics`` accepts."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, loopback
from tests.engine import chat_requests, query, submit, wait_for
from tests.observability import SECRET, check_metrics, provider_file, require_binary, scrape, value

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

ADMIN = {"Authorization": "Bearer test-admin-key"}


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = provider_file(simulator, tmp_path_factory.mktemp("providers"))
    return gateway_factory(env).start()


@pytest.fixture(scope="module")
def idle_gateway(gateway_factory: Any) -> GatewayProcess:
    """A gateway without a worker, so batches stay where the API left them; windows may be 1 s."""
    env = {"BATCHGW_WORKER__ENABLED_IN_SERVE": "false", "BATCHGW_LIMITS__MIN_COMPLETION_WINDOW_S": "1"}
    return gateway_factory(env).start()


@pytest.fixture(scope="module")
def finished_batch(client: openai.OpenAI) -> Any:
    return wait_for(client, submit(client, chat_requests(12)).id)


def test_metrics_are_open_to_scrapers_in_the_text_format(gateway: GatewayProcess) -> None:
    response = loopback.get(f"{gateway.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(response.text, "batchgw_database_up") == 1
    schema = loopback.get(f"{gateway.base_url}/schema/openapi.json", timeout=30).json()
    assert "/metrics" not in schema["paths"]


def test_api_requests_are_timed_by_route_template_method_and_status_class(idle_gateway: GatewayProcess) -> None:
    key = idle_gateway.create_key("timed")
    headers = {"Authorization": f"Bearer {key}"}
    before = scrape(idle_gateway.base_url)
    files = "/v1/files/{file_id}"
    seen = {
        (files, "GET", "4xx"): value(before, "batchgw_http_request_duration_seconds_count",
                                     route=files, method="GET", status_class="4xx") or 0,
        ("/v1/files", "GET", "2xx"): value(before, "batchgw_http_request_duration_seconds_count",
                                           route="/v1/files", method="GET", status_class="2xx") or 0,
    }  # fmt: skip
    for n in range(3):  # three different ids: one route template
        missing = loopback.get(f"{idle_gateway.base_url}/v1/files/file-{n}", headers=headers, timeout=30)
        assert missing.status_code == 404
    assert loopback.get(f"{idle_gateway.base_url}/v1/files", headers=headers, timeout=30).status_code == 200
    after = scrape(idle_gateway.base_url)

    count = "batchgw_http_request_duration_seconds_count"
    assert value(after, count, route=files, method="GET", status_class="4xx") == seen[(files, "GET", "4xx")] + 3
    assert value(after, count, route="/v1/files", method="GET", status_class="2xx") == (
        seen[("/v1/files", "GET", "2xx")] + 1
    )
    assert "file-1" not in after, "a path with an id became a label"
    slowest = value(after, "batchgw_http_request_duration_seconds_bucket",
                    route="/v1/files", method="GET", status_class="2xx", le="+Inf")  # fmt: skip
    assert slowest == value(after, count, route="/v1/files", method="GET", status_class="2xx")


def test_a_finished_batch_is_counted_and_agrees_with_the_ledger(gateway: GatewayProcess, finished_batch: Any) -> None:
    assert finished_batch.status == "completed"
    text = scrape(gateway.base_url)
    usage = finished_batch.usage
    assert value(text, "batchgw_requests_total", provider="main", outcome="succeeded") == 12
    for outcome in ("failed", "expired", "cancelled"):
        assert value(text, "batchgw_requests_total", provider="main", outcome=outcome) == 0
    assert value(text, "batchgw_request_retries_total", provider="main") == 0
    tokens = {"provider": "main", "model": "gpt-4o-mini"}
    assert value(text, "batchgw_tokens_total", direction="input", **tokens) == usage.input_tokens
    assert value(text, "batchgw_tokens_total", direction="output", **tokens) == usage.output_tokens
    [(cost, list_cost)] = query(
        gateway, "SELECT SUM(cost_usd), SUM(list_cost_usd) FROM ledger WHERE batch_id = :b", b=finished_batch.id
    )
    assert cost > 0 and list_cost > cost
    spend = value(text, "batchgw_spend_usd_total", team="acme", reason="served", **tokens)
    savings = value(text, "batchgw_savings_usd_total", team="acme", **tokens)
    assert spend == pytest.approx(cost, abs=1e-12)
    assert savings == pytest.approx(list_cost - cost, abs=1e-12)
    assert value(text, "batchgw_shard_turnaround_seconds_count", provider="main") == 1
    assert value(text, "batchgw_batch_turnaround_seconds_count", provider="main") == 1
    assert value(text, "batchgw_batches", status="completed") == 1
    assert value(text, "batchgw_shards", state="done", provider="main") == 1
    assert value(text, "batchgw_shards", state="queued", provider="main") == 0


def test_exposition_passes_promtool_check_metrics(gateway: GatewayProcess, finished_batch: Any) -> None:
    promtool = require_binary("promtool")
    text = scrape(gateway.base_url)
    assert "batchgw_shard_turnaround_seconds_bucket" in text  # a real batch ran: histograms have samples
    result = check_metrics(promtool, text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


def test_no_secret_is_exposed(gateway: GatewayProcess, finished_batch: Any) -> None:
    text = scrape(gateway.base_url)
    assert SECRET not in text and "test-admin-key" not in text
    assert gateway.database_url not in text


def test_every_configured_provider_is_up_with_a_closed_circuit(gateway: GatewayProcess) -> None:
    text = scrape(gateway.base_url)
    for provider in ("main", "spare", "serial"):
        assert value(text, "batchgw_provider_up", provider=provider) == 1
        assert value(text, "batchgw_provider_circuit_state", provider=provider, state="closed") == 1
        assert value(text, "batchgw_provider_circuit_state", provider=provider, state="open") == 0


def test_an_open_circuit_reads_as_provider_down(gateway: GatewayProcess) -> None:
    query(gateway, "INSERT INTO provider_health (provider, circuit, consecutive_failures, updated_at) "
          "VALUES ('spare', 'open', 5, :t)", t=time.time())  # fmt: skip
    text = scrape(gateway.base_url)
    assert value(text, "batchgw_provider_up", provider="spare") == 0
    assert value(text, "batchgw_provider_circuit_state", provider="spare", state="open") == 1
    assert value(text, "batchgw_provider_circuit_state", provider="spare", state="closed") == 0
    assert value(text, "batchgw_provider_up", provider="main") == 1


def test_budget_gauges_agree_with_the_admin_api(gateway: GatewayProcess, finished_batch: Any) -> None:
    [(spent,)] = query(gateway, "SELECT SUM(cost_usd) FROM ledger")
    limit = spent * 4
    body = {"scope": "team:acme", "period": "month", "limit_usd": limit, "hard": False}
    response = loopback.put(f"{gateway.base_url}/admin/budgets", json=body, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    text = scrape(gateway.base_url)
    labels = {"scope": "team:acme", "period": "month", "hard": "false"}
    assert value(text, "batchgw_budget_limit_usd", **labels) == pytest.approx(limit)
    assert value(text, "batchgw_budget_spent_usd", **labels) == pytest.approx(spent, abs=1e-12)
    assert value(text, "batchgw_budget_utilization_ratio", **labels) == pytest.approx(0.25)
    assert value(text, "batchgw_budget_reserved_usd", **labels) == 0  # nothing running
    assert value(text, "batchgw_budget_remaining_usd", **labels) == pytest.approx(limit - spent)
    [listed] = loopback.get(f"{gateway.base_url}/admin/budgets", headers=ADMIN, timeout=30).json()["data"]
    assert listed["spent_usd"] == pytest.approx(spent, abs=1e-12)


def test_queued_shards_and_their_age(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    batch = submit(client, chat_requests(6, model="serial"))  # 3 shards of 2, one at a time, 5 s each
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = scrape(gateway.base_url)
        if value(text, "batchgw_shards", state="queued", provider="serial") == 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"never saw two queued shards:\n{text}")
    first_age = value(text, "batchgw_oldest_queued_shard_age_seconds")
    assert first_age is not None and first_age >= 0
    time.sleep(1.0)
    later = scrape(gateway.base_url)
    if value(later, "batchgw_shards", state="queued", provider="serial") == 2:
        assert value(later, "batchgw_oldest_queued_shard_age_seconds") >= first_age + 1.0  # type: ignore[operator]
    client.batches.cancel(batch.id)
    wait_for(client, batch.id)


def test_batches_past_their_window_and_reservations(idle_gateway: GatewayProcess) -> None:
    client = idle_gateway.client(idle_gateway.create_key("acme"))
    idle_gateway.create_key("beta")
    content = "".join(json.dumps(r) + "\n" for r in chat_requests(3)).encode()
    upload = client.files.create(file=("input.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="1s",  # type: ignore[arg-type]
    )
    query(idle_gateway, "UPDATE batches SET estimated_cost_usd = 0.25, cost_usd = 0.05 WHERE id = :b", b=batch.id)
    for team in ("acme", "beta"):
        body = {"scope": f"team:{team}", "period": "day", "limit_usd": 1.0, "hard": True}
        assert loopback.put(f"{idle_gateway.base_url}/admin/budgets", json=body, headers=ADMIN, timeout=30).is_success
    text = scrape(idle_gateway.base_url)
    assert value(text, "batchgw_batches", status="validating") == 1
    labels = {"period": "day", "hard": "true"}
    assert value(text, "batchgw_budget_reserved_usd", scope="team:acme", **labels) == pytest.approx(0.20)
    assert value(text, "batchgw_budget_remaining_usd", scope="team:acme", **labels) == pytest.approx(0.80)
    assert value(text, "batchgw_budget_reserved_usd", scope="team:beta", **labels) == 0
    query(idle_gateway, "UPDATE batches SET projected_cost_usd = 0.45 WHERE id = :b", b=batch.id)  # reality grew
    assert value(scrape(idle_gateway.base_url), "batchgw_budget_reserved_usd", scope="team:acme", **labels) == (
        pytest.approx(0.40)
    )
    time.sleep(1.5)
    assert value(scrape(idle_gateway.base_url), "batchgw_batches_past_window") == 1
