"""Gemini's and Anthropic's synchronous kinds (``gemini_sync``, ``anthropic_sync``) and their service tiers,
through ``batchgw serve``, next to a cheaper provider batch.

A one-hour deadline runs at Gemini's flex tier, and flex calls Gemini refused for short capacity cost nothing;
a three-day deadline takes the cheaper batch tier; ``tier=priority`` asks Gemini for ``serviceTier: priority``
and Anthropic for ``service_tier: auto``, and the answers served at the standard tier instead are billed at
the standard rate; a standard placement on Anthropic asks for ``standard_only``, so nothing is billed at
priority. Every cost is checked against what the emulator billed at each tier. A worker killed in the middle
of a shard on either kind leaves no request unanswered and resends at most the ones in flight; one frozen there
past its lease and woken while another finishes the shard adds no answer and no charge (PostgreSQL); and a
provider answering 5xx to a third of the calls still gives every answer.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import Batch

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import (
    admin,
    answer_tokens,
    chat_requests,
    collect,
    ledger_cost,
    priced,
    run_tiered,
    submit,
    wait_for,
    wait_frozen,
    worker_killed_at,
    worker_process,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

GEMINI, CLAUDE = "tiered-gemini", "tiered-claude"
STANDARD, FLEX, PRIORITY, BATCH = (1.0, 4.0), (0.5, 2.0), (2.0, 8.0), (0.4, 1.6)
CONCURRENCY = 4
PROVIDERS = {
    # gateway provider: (adapter kind, emulator, the emulator's model, gateway model)
    "gem": ("gemini_sync", "gem-emu", "gemini-2.5-flash", GEMINI),
    "claude": ("anthropic_sync", "claude-emu", "claude-haiku-4-5", CLAUDE),
    "batchy": ("openai", "batchy-emu", "gpt-4o-mini", GEMINI),
}
REQUESTS = 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="gem-emu", kind="gemini", models=["gemini-2.5-flash"]),
        ProviderSpec(name="claude-emu", kind="anthropic", models=["claude-haiku-4-5"]),
        ProviderSpec(name="batchy-emu", models=["gpt-4o-mini"], processing_delay_s=0.2),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def offer(provider: str, model: str, mode: str, rates: dict[str, tuple[float, float]]) -> list[str]:
    lines = [f'[[models."{model}".offers]]', f'provider = "{provider}"', f'provider_model = "{PROVIDERS[provider][2]}"']
    lines.append(f'modes = ["{mode}"]')
    for prefix, (rate_in, rate_out) in rates.items():
        lines += [f"{prefix}input_per_mtok = {rate_in}", f"{prefix}output_per_mtok = {rate_out}"]
    return [*lines, 'source = "test prices"', "as_of = 2026-12-01", ""]


@pytest.fixture(scope="module")
def env(cluster: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("providers")
    providers = {
        name: {
            "emulator": emulator,
            "kind": kind,
            "models": {served: model},
            "limits": {"max_concurrency": CONCURRENCY, "requests_per_minute": 6000} if kind != "openai" else {},
        }
        for name, (kind, emulator, model, served) in PROVIDERS.items()
    }
    catalog = ["schema_version = 1", f'[models."{GEMINI}"]', f'[models."{CLAUDE}"]', ""]
    catalog += offer("gem", GEMINI, "sync", {"": STANDARD, "flex_": FLEX, "priority_": PRIORITY})
    catalog += offer("batchy", GEMINI, "batch", {"": STANDARD, "batch_": BATCH})
    catalog += offer("claude", CLAUDE, "sync", {"": STANDARD, "priority_": PRIORITY})
    (folder / "catalog.toml").write_text("\n".join(catalog), encoding="utf-8")
    return simulated_provider_env(cluster, folder, providers) | {"BATCHGW_CATALOG__FILE": str(folder / "catalog.toml")}


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, env: dict[str, str]) -> GatewayProcess:
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def clean_emulators(cluster: SimulatorCluster) -> Iterator[None]:
    for name in cluster.names():
        cluster.reset(name)
    yield
    for name in cluster.names():
        cluster.reset(name)


def run(client: openai.OpenAI, model: str, prefix: str, window: str = "24h", **metadata: str) -> Batch:
    return run_tiered(client, model, prefix, REQUESTS, window, **metadata)


def by_served_tier(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    served: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        served.setdefault(line["response"]["body"]["service_tier"], []).append(line)
    return served


def billed(cluster: SimulatorCluster, emulator: str) -> dict[str, dict[str, int]]:
    return cluster.state(emulator).stats.usage_by_tier


def as_billed(served: dict[str, list[dict[str, Any]]], names: dict[str, str]) -> dict[str, dict[str, int]]:
    """The emulator's invoice the answers imply, with the provider's name of each tier."""
    billed = {tier: answer_tokens(lines) for tier, lines in served.items()}
    return {names[tier]: {"input": counts[0], "output": counts[1]} for tier, counts in billed.items()}


def test_a_one_hour_deadline_runs_at_gemini_flex_and_refused_flex_calls_cost_nothing(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    cluster.set_faults("gem-emu", flex_unavailable_next=3)
    batch = run(client, GEMINI, "flex", deadline="1h")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    served = by_served_tier(list(outcome.output.values()))
    assert set(served) == {"flex"}
    decision = admin(gateway, f"/batches/{batch.id}")["decisions"][0]
    assert decision["chosen_provider"] == "gem" and decision["reason"].startswith("gem: flex tier:")
    assert {c["tier"] for c in decision["candidates"]} == {"batch", "standard", "flex", "priority"}
    assert cluster.state("gem-emu").stats.flex_refused == 3
    assert billed(cluster, "gem-emu") == as_billed(served, {"flex": "flex"})  # the refused calls billed nothing
    cost, modes = ledger_cost(gateway, batch.id)
    assert modes == {"flex"} and cost == pytest.approx(priced(answer_tokens(served["flex"]), FLEX), rel=1e-9)


def test_a_three_day_deadline_takes_the_cheaper_batch_tier(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    batch = run(client, GEMINI, "days", window="72h", deadline="72h")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS
    decision = admin(gateway, f"/batches/{batch.id}")["decisions"][0]
    assert decision["chosen_provider"] == "batchy" and decision["reason"].startswith("batchy: batch tier:")
    assert billed(cluster, "gem-emu") == {}
    cost, modes = ledger_cost(gateway, batch.id)
    assert modes == {"batch"} and cost == pytest.approx(priced(answer_tokens(list(outcome.output.values())), BATCH))


@pytest.mark.parametrize(
    ("model", "emulator", "names"),
    [
        (GEMINI, "gem-emu", {"priority": "priority", "default": "standard"}),
        (CLAUDE, "claude-emu", {"priority": "priority", "default": "standard"}),
    ],
    ids=["gemini", "anthropic"],
)
def test_priority_answers_served_at_the_standard_tier_are_billed_at_the_standard_rate(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    cluster: SimulatorCluster,
    model: str,
    emulator: str,
    names: dict[str, str],
) -> None:
    cluster.set_faults(emulator, priority_downgrade_rate=0.5)
    batch = run(client, model, "prio", tier="priority")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    served = by_served_tier(list(outcome.output.values()))
    assert set(served) == {"priority", "default"}, "the emulator downgraded none or all: nothing is compared"
    assert billed(cluster, emulator) == as_billed(served, names)
    cost, modes = ledger_cost(gateway, batch.id)
    expected = priced(answer_tokens(served["priority"]), PRIORITY) + priced(answer_tokens(served["default"]), STANDARD)
    assert modes == {"priority"} and cost == pytest.approx(expected, rel=1e-9)
    assert float((batch.metadata or {})["gateway_cost_usd"]) == pytest.approx(expected, abs=1e-6)


def test_a_standard_placement_on_anthropic_is_never_billed_at_priority(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    """The emulator has Priority capacity for every ``auto`` call: only ``standard_only`` keeps it unused."""
    batch = run(client, CLAUDE, "std", deadline="1h")
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == REQUESTS and not outcome.errors
    served = by_served_tier(list(outcome.output.values()))
    assert set(served) == {"default"}
    assert billed(cluster, "claude-emu") == as_billed(served, {"default": "standard"})
    cost, modes = ledger_cost(gateway, batch.id)
    assert modes == {"sync"} and cost == pytest.approx(priced(answer_tokens(served["default"]), STANDARD), rel=1e-9)


PINNED = [("gem", f"gem/{GEMINI}"), ("claude", f"claude/{CLAUDE}")]
"""Each synchronous provider pinned (the Gemini model's batch offer is cheaper)."""


@pytest.mark.parametrize(("provider", "model"), PINNED, ids=["gemini", "anthropic"])
def test_a_worker_killed_mid_shard_resends_at_most_the_requests_in_flight(
    gateway_factory: Any, env: dict[str, str], cluster: SimulatorCluster, provider: str, model: str
) -> None:
    emulator = PROVIDERS[provider][1]
    api = gateway_factory(env).start("serve", "--no-worker")
    client = api.client(api.create_key("crash"))
    requests = chat_requests(30, model=model, prefix=f"kill-{provider}")
    batch = submit(client, requests)
    survivor = worker_killed_at(api, env, "fanout.after_request:15")  # the first worker dies after 15 answers
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=90))
    finally:
        survivor.stop()
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests)
    assert {line["provider"] for line in outcome.output.values()} == {provider}
    assert 30 <= cluster.state(emulator).stats.requests_processed <= 30 + CONCURRENCY


@pytest.mark.parametrize(("provider", "model"), PINNED, ids=["gemini", "anthropic"])
def test_a_provider_failing_a_third_of_its_calls_still_answers_every_request(
    client: openai.OpenAI, cluster: SimulatorCluster, provider: str, model: str
) -> None:
    emulator = PROVIDERS[provider][1]
    cluster.set_faults(emulator, error_5xx_rate=0.3, rate_limit_next=3, retry_after_s=1)
    batch = run(client, model, "faulty")
    outcome = collect(client, batch)
    assert batch.status == "completed" and not outcome.errors and len(outcome.output) == REQUESTS
    assert all(line["response"]["status_code"] == 200 for line in outcome.output.values())
    statuses = [entry.status for entry in cluster.state(emulator).log if entry.method == "POST"]
    assert statuses.count(429) == 3 and any(status >= 500 for status in statuses)


@pytest.mark.database("postgresql", reason="several workers on one database need PostgreSQL")
@pytest.mark.parametrize(("provider", "model"), PINNED, ids=["gemini", "anthropic"])
def test_a_worker_frozen_mid_shard_past_its_lease_changes_nothing_when_it_wakes(
    gateway_factory: Any, env: dict[str, str], cluster: SimulatorCluster, provider: str, model: str
) -> None:
    emulator = PROVIDERS[provider][1]
    lease = {"BATCHGW_WORKER__LEASE_S": "3"}
    api = gateway_factory(env | lease).start("serve", "--no-worker")
    client = api.client(api.create_key("freeze"))
    requests = chat_requests(30, model=model, prefix=f"freeze-{provider}")
    frozen = worker_process(api, f"frozen-{provider}", BATCHGW_FREEZE_AT="fanout.after_request:10").start("worker")
    live: GatewayProcess | None = None
    try:
        batch = submit(client, requests)
        wait_frozen(frozen)
        live = worker_process(api, f"live-{provider}").start("worker")
        time.sleep(4.5)  # the frozen worker's lease has expired: the live worker owns the shard now
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGCONT)
        outcome = collect(client, wait_for(client, batch.id, timeout=90))
        time.sleep(3)  # the woken worker has had time to try whatever it was doing
        again = client.batches.retrieve(batch.id)
    finally:
        for worker in (frozen, live):
            if worker is not None and worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
            if worker is not None:
                worker.stop()
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in requests)
    assert (again.status, again.output_file_id) == ("completed", outcome.batch.output_file_id)
    assert 30 <= cluster.state(emulator).stats.requests_processed <= 30 + CONCURRENCY
    # Paid once: the ledger holds the answers in the output file, at the rate of the tier that served them.
    cost, modes = ledger_cost(api, outcome.batch.id)
    rates = {"flex": FLEX, "sync": STANDARD}[modes.pop()]
    assert not modes and cost == pytest.approx(priced(answer_tokens(outcome.output.values()), rates), rel=1e-9)
