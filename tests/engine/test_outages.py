"""Provider failures as they happen in production, tried end to end against the emulators:

* an outage mid-job (503s, connection resets, a refused port): the work moves to the healthy provider,
  and the provider batches left behind stay owned: cancelled as soon as their provider answers again,
  followed to their end and billed (answers that cannot be read included), so the ledger equals each
  provider's own invoice;
* a storm of 429s: the provider is alive and asks for patience, which it gets: nothing moves;
* every provider down: nowhere to go, so nothing moves; the job finishes where it was once they are back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dashboard import format as fmt
from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, loopback
from tests.dashboard.conftest import app_test, log_in
from tests.engine import (
    BATCH_RATES,
    batch_creates,
    chat_requests,
    collect,
    control,
    emulator_log,
    query,
    reset,
    set_faults,
    start_gateway,
    submit,
    wait_for,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

REQUESTS = 40
PER_SHARD = 10
POLL_INTERVAL_S = 1.0
"""``provider_poll_max_s`` of these gateways (the engine tests' setting): the longest a step waits to poll."""
ADAPTER_RETRY_S = 2.5
"""The longest an adapter call waits between its own retries (3 tries: about 0.5 s, then about 1 s, plus jitter):
a call that started while the provider was down may be asleep when it comes back."""
STORM_S = 10.0
"""How long a 429 storm or an outage of every provider lasts: five times ``provider_down_failover_s`` (2 s) of
these gateways and ten ``Retry-After`` periods, so any failover or circuit would have acted within it."""
ENV = {"BATCHGW_WORKER__ABANDONED_SWEEP_S": "0.25"}


@pytest.fixture(autouse=True)
def clean_emulators(simulator: SimulatorCluster) -> None:
    reset(simulator, "fast", "steady", "slow")


def admin_call(gateway: GatewayProcess, method: str, path: str, body: Any = None) -> Any:
    response = loopback.request(
        method,
        f"{gateway.base_url}/admin{path}",
        json=body,
        headers={"Authorization": "Bearer test-admin-key"},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def wait_until(check: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def submit_to_cheap(gateway: GatewayProcess, simulator: SimulatorCluster, cheap: str) -> tuple[Any, Any, list[Any]]:
    """Submit the job's requests with a new key and wait until every shard reached the cheap provider's emulator;
    the client, the batch and the requests."""
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(REQUESTS)
    batch = submit(client, requests)
    wait_until(
        lambda: len(batch_creates(emulator_log(simulator, cheap))) == REQUESTS // PER_SHARD,
        60, "the shards never reached the cheap provider",
    )  # fmt: skip
    return client, batch, requests


def invoice_usd(cluster: SimulatorCluster, emulator: str, rates: tuple[float, float]) -> float:
    """What the emulated provider bills: every successful request of every batch it ran, at ``rates``."""
    invoice = control(cluster, "GET", f"/providers/{emulator}/invoice")
    return sum(b["input_tokens"] * rates[0] + b["output_tokens"] * rates[1] for b in invoice["batches"]) / 1e6


def ledger_usd(gateway: GatewayProcess, provider: str) -> float:
    return float(query(gateway, "SELECT coalesce(sum(cost_usd), 0) FROM ledger WHERE provider = :p", p=provider)[0][0])


@pytest.mark.parametrize("mode", ["503", "reset", "refuse"])
def test_outage_mid_job_moves_work_once_and_bills_what_the_abandoned_batches_ran(
    mode: str, gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="slow", pricey="fast",
        limits={"max_requests_per_batch": PER_SHARD}, env=ENV,
    )  # fmt: skip
    admin_call(gateway, "PUT", "/budgets", {"scope": "global", "period": "day", "limit_usd": 100, "hard": False})
    # The first answer of each abandoned batch's results is cut short: billed all the same, from its batch's usage.
    set_faults(simulator, "slow", malformed_output_line=True)
    client, batch, requests = submit_to_cheap(gateway, simulator, "slow")
    set_faults(simulator, "slow", down=mode)
    batch = wait_for(client, batch.id, timeout=120)
    outcome = collect(client, batch)
    assert batch.status == "completed", batch
    assert set(outcome.output) == {r["custom_id"] for r in requests} and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"pricey"}

    abandoned = admin_call(gateway, "GET", f"/batches/{batch.id}")["abandoned_provider_batches"]
    assert len(abandoned) == REQUESTS // PER_SHARD and all(a["state"] == "open" for a in abandoned), abandoned
    assert all("healthy" in a["reason"] for a in abandoned), "the move records the probe that allowed it"
    failovers = [d for d in admin_call(gateway, "GET", f"/batches/{batch.id}")["decisions"] if d["kind"] == "failover"]
    assert failovers and all("health probe answered" in d["cause"] for d in failovers), failovers

    back_at = time.time()
    set_faults(simulator, "slow", down="off")

    def settled() -> bool:
        rows = admin_call(gateway, "GET", f"/batches/{batch.id}")["abandoned_provider_batches"]
        return all(a["state"] == "settled" for a in rows)

    wait_until(settled, 60, "the abandoned provider batches were never settled")
    cancels = {
        entry["path"].split("/")[3]: entry["timestamp"]
        for entry in emulator_log(simulator, "slow")
        if entry["method"] == "POST" and entry["path"].endswith("/cancel")
    }
    for row in abandoned:
        assert row["provider_batch_id"] in cancels, f"no cancel for {row['provider_batch_id']}"
        # Within one poll interval of the provider answering again (plus the adapter's own retry sleep, for a
        # call that began before the provider came back).
        assert cancels[row["provider_batch_id"]] - back_at <= POLL_INTERVAL_S + ADAPTER_RETRY_S, (cancels, back_at)

    # Each provider's ledger equals its own invoice: the abandoned batches are billed, once.
    cheap_invoice = invoice_usd(simulator, "slow", BATCH_RATES["cheap"])
    assert cheap_invoice > 0, "the abandoned batches ran requests before the cancel"
    assert ledger_usd(gateway, "cheap") == pytest.approx(cheap_invoice, abs=1e-6)
    pricey_invoice = invoice_usd(simulator, "fast", BATCH_RATES["pricey"])
    assert ledger_usd(gateway, "pricey") == pytest.approx(pricey_invoice, abs=1e-6)
    total = ledger_usd(gateway, "cheap") + ledger_usd(gateway, "pricey")

    batch = client.batches.retrieve(batch.id)
    metadata = batch.metadata or {}
    assert float(metadata["gateway_cost_usd"]) == pytest.approx(total, abs=1e-6)
    assert float(metadata["gateway_paid_twice_usd"]) == pytest.approx(cheap_invoice, abs=1e-6)
    detail = admin_call(gateway, "GET", f"/batches/{batch.id}")
    assert detail["paid_twice_usd"] == pytest.approx(cheap_invoice, abs=1e-6)
    settled_costs = [a["cost_usd"] for a in detail["abandoned_provider_batches"]]
    assert sum(settled_costs) == pytest.approx(cheap_invoice, abs=1e-5), "each settled row shows what it cost"
    [budget] = admin_call(gateway, "GET", "/budgets")["data"]
    assert budget["spent_usd"] == pytest.approx(total, abs=1e-6)
    metrics = loopback.get(f"{gateway.base_url}/metrics", timeout=30).text
    abandoned_spend = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("batchgw_spend_usd_total{") and 'reason="abandoned"' in line
    )
    assert abandoned_spend == pytest.approx(cheap_invoice, abs=1e-6)

    # The operator's job page says so.
    page = app_test(monkeypatch, gateway.base_url)
    page.switch_page("views/job.py")
    page.query_params["batch"] = batch.id
    log_in(page)
    assert not page.exception, [e.value for e in page.exception]
    banner = " ".join(str(e.value) for e in page.error)
    assert f"Paid twice: {fmt.money(cheap_invoice)}" in banner, banner
    abandoned_table = next(d.value for d in page.dataframe if "requests billed" in d.value.columns)
    assert len(abandoned_table) == REQUESTS // PER_SHARD and set(abandoned_table["state"]) == {"settled"}


def test_a_429_storm_is_waited_out_and_moves_nothing(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="steady", pricey="fast",
        limits={"max_requests_per_batch": PER_SHARD}, env=ENV,
    )  # fmt: skip
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(REQUESTS)
    batch = submit(client, requests)
    wait_until(lambda: len(batch_creates(emulator_log(simulator, "steady"))) >= 1, 60, "nothing was submitted")
    set_faults(simulator, "steady", rate_limit_rate=1.0, retry_after_s=1)
    storm_ends = time.monotonic() + STORM_S
    seen_reason = False
    while time.monotonic() < storm_ends:
        current = client.batches.retrieve(batch.id)
        assert current.status in ("in_progress", "validating"), current
        seen_reason = seen_reason or "rate limiting" in (current.metadata or {}).get("gateway_waiting", "")
        time.sleep(0.5)
    assert seen_reason, "the batch never said it waits for a rate-limiting provider"
    set_faults(simulator, "steady", rate_limit_rate=0.0)
    batch = wait_for(client, batch.id, timeout=120)
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"cheap"}
    assert not emulator_log(simulator, "fast"), "a request reached the second provider during the storm"
    providers = {p["name"]: p["health"]["circuit"] for p in admin_call(gateway, "GET", "/providers")["data"]}
    assert providers["cheap"] == "closed", "429s opened the circuit"
    assert not admin_call(gateway, "GET", f"/batches/{batch.id}")["abandoned_provider_batches"]


def test_with_every_provider_down_nothing_moves_and_the_job_finishes_where_it_was(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="steady", pricey="fast",
        limits={"max_requests_per_batch": PER_SHARD}, env=ENV,
    )  # fmt: skip
    client, batch, _ = submit_to_cheap(gateway, simulator, "steady")
    set_faults(simulator, "steady", down="refuse")
    set_faults(simulator, "fast", down="refuse")
    time.sleep(STORM_S)
    waiting = client.batches.retrieve(batch.id)
    assert waiting.status == "in_progress"
    assert "unreachable" in (waiting.metadata or {}).get("gateway_waiting", ""), waiting.metadata
    set_faults(simulator, "steady", down="off")
    set_faults(simulator, "fast", down="off")
    batch = wait_for(client, batch.id, timeout=120)
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"cheap"}
    assert not batch_creates(emulator_log(simulator, "fast")), "work moved although nowhere else was up"
    assert not admin_call(gateway, "GET", f"/batches/{batch.id}")["abandoned_provider_batches"]
    assert len(batch_creates(emulator_log(simulator, "steady"))) == REQUESTS // PER_SHARD


def test_a_provider_back_from_an_outage_wakes_the_shards_waiting_for_it(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # Long poll back-offs and no failover: the shards wait where they are, each on its own schedule, and the health
    # probe (every cool-down of 1 s) is the first call to find the provider back.
    env = ENV | {
        "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": "3",
        "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": "120",
        "BATCHGW_ROUTING__CIRCUIT_COOLDOWN_S": "1",
        "BATCHGW_ROUTING__PROVIDER_DOWN_FAILOVER_S": "600",
    }
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="slow", pricey="fast",
        limits={"max_requests_per_batch": PER_SHARD}, env=env,
    )  # fmt: skip
    client, batch, _ = submit_to_cheap(gateway, simulator, "slow")
    set_faults(simulator, "slow", down="503")

    def next_looks() -> list[float]:
        """How far off each waiting shard's own next look is."""
        rows = query(
            gateway,
            "SELECT next_action_at FROM shards WHERE batch_id = :b AND wait_code = 'provider_unreachable'",
            b=batch.id,
        )
        return [row[0] - time.time() for row in rows]

    wait_until(
        lambda: len(looks := next_looks()) == REQUESTS // PER_SHARD and min(looks) >= 10,
        90, "the shards never backed off for 10 s",
    )  # fmt: skip
    back_at = time.time()
    set_faults(simulator, "slow", down="off")
    batch = wait_for(client, batch.id, timeout=120)
    assert batch.status == "completed" and batch.completed_at is not None
    # Done before any shard's own next look would have come: the probe that found the provider back woke them.
    assert batch.completed_at - back_at < 8, (batch.completed_at, back_at)
    assert {line["provider"] for line in collect(client, batch).output.values()} == {"cheap"}
    assert "shards waiting for it are due now" in gateway.log()


def test_a_cancel_that_waits_for_an_unreachable_provider_says_so_and_ends_once_it_answers(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    env = ENV | {"BATCHGW_ROUTING__PROVIDER_DOWN_FAILOVER_S": "600"}  # the running shards stay where they are
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="slow", pricey="fast",
        limits={"max_requests_per_batch": PER_SHARD}, env=env,
    )  # fmt: skip
    client, batch, _ = submit_to_cheap(gateway, simulator, "slow")
    set_faults(simulator, "slow", down="refuse")
    assert client.batches.cancel(batch.id).status == "cancelling"

    def waiting() -> str:
        return str((client.batches.retrieve(batch.id).metadata or {}).get("gateway_waiting", ""))

    wait_until(lambda: "cancelling the provider batch at cheap failed" in waiting(), 30, "the cancel's wait is unsaid")
    assert admin_call(gateway, "GET", f"/batches/{batch.id}")["waiting"]["code"] == "provider_unreachable"
    set_faults(simulator, "slow", down="off")
    batch = wait_for(client, batch.id, timeout=120)
    assert batch.status == "cancelled"
    assert not batch_creates(emulator_log(simulator, "fast")), "a cancelled batch's work moved"
