"""Routing end to end: two emulated providers sell the same model at different prices.

The batch runs on the cheapest healthy one, moves when that one fails (down, failing requests,
stalled), completes exactly once per request, and an admin can read why each decision was taken.
Each test starts its own gateway, so circuit breakers and turnaround statistics start fresh.
"""

from __future__ import annotations

import json
import textwrap
import time
from array import array
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.pipeline.line_figures import LineFigures
from gateway.simulator import SimulatorCluster
from tests.conftest import simulated_provider_env
from tests.engine import (
    BATCH_RATES,
    CHAT,
    CHEAP,
    PRICEY,
    ROUTING_ENV,
    admin,
    batch_creates,
    chat_request,
    chat_requests,
    collect,
    control,
    create_batch,
    emulator_log,
    expected_cost,
    query,
    reset,
    set_faults,
    start_gateway,
    submit,
    wait_for,
    worker_process,
    write_catalog,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases


@pytest.fixture(autouse=True)
def clean_emulators(simulator: SimulatorCluster) -> None:
    reset(simulator, "fast", "steady", "slow", "other")


def test_batch_runs_on_the_cheapest_provider_and_says_why(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other")
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(30)
    batch = wait_for(client, submit(client, requests).id)
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == 30 and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"cheap"}
    assert not emulator_log(simulator, "other"), "the expensive provider was called"

    metadata = batch.metadata or {}
    assert metadata["gateway_policy"] == "cheapest"
    assert metadata["gateway_providers"] == "cheap"
    cost = expected_cost(outcome, BATCH_RATES)
    assert float(metadata["gateway_cost_usd"]) == pytest.approx(cost, abs=1e-6)
    list_cost = expected_cost(outcome, {"cheap": CHEAP["sync"]})
    assert float(metadata["gateway_savings_usd"]) == pytest.approx(list_cost - cost, abs=1e-6)

    detail = admin(gateway, f"/batches/{batch.id}")
    [decision] = detail["decisions"]
    assert decision["kind"] == "route" and decision["policy"] == "cheapest"
    assert decision["chosen_provider"] == "cheap"
    assert "lowest estimated cost" in decision["reason"]
    ranked = [c["provider"] for c in decision["candidates"]]
    assert ranked == ["cheap", "pricey"]
    costs = [c["estimated_cost_usd"] for c in decision["candidates"]]
    assert 0 < costs[0] < costs[1]
    assert detail["providers"] == ["cheap"] and detail["cost_usd"] == pytest.approx(cost, abs=1e-6)


def test_cheap_provider_going_down_mid_job_moves_the_rest_exactly_once(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # The cheap provider takes 5 s a batch, so it goes down while its batches run, however busy the machine.
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="slow", pricey="fast", limits={"max_requests_per_batch": 10}
    )
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(60)
    batch = submit(client, requests)
    wait_for(client, batch.id, until=lambda b: b.status == "in_progress", timeout=30)
    deadline = time.monotonic() + 30
    while not batch_creates(emulator_log(simulator, "slow")):
        assert time.monotonic() < deadline, "nothing reached the cheap provider"
        time.sleep(0.05)
    set_faults(simulator, "slow", down="refuse")
    batch = wait_for(client, batch.id, timeout=120)
    outcome = collect(client, batch)
    assert batch.status == "completed", batch
    assert set(outcome.output) == {r["custom_id"] for r in requests} and not outcome.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (60, 60, 0)
    assert "pricey" in {line["provider"] for line in outcome.output.values()}

    detail = admin(gateway, f"/batches/{batch.id}")
    failovers = [d for d in detail["decisions"] if d["kind"] == "failover"]
    assert failovers, detail["decisions"]
    for decision in failovers:
        assert decision["chosen_provider"] == "pricey"
        assert "cheap" in decision["cause"]
        assert [c["provider"] for c in decision["candidates"]] == ["pricey"]
    assert sum(s["completed"] for s in detail["shards"]) == 60
    assert float((batch.metadata or {})["gateway_cost_usd"]) == pytest.approx(
        expected_cost(outcome, BATCH_RATES), abs=1e-6
    )
    providers = admin(gateway, "/providers")["data"]
    assert {p["name"]: p["health"]["circuit"] for p in providers}["cheap"] == "open"


def test_requests_failing_at_random_are_retried_until_the_job_completes(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(
        gateway_factory,
        simulator,
        tmp_path,
        cheap="fast",
        pricey="other",
        env={"BATCHGW_ROUTING__MAX_REQUEST_ATTEMPTS": "10"},
    )
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", fail_fraction=0.3, fail_per_batch=True)
    requests = chat_requests(50)
    batch = wait_for(client, submit(client, requests).id, timeout=120)
    outcome = collect(client, batch)
    assert batch.status == "completed"
    assert set(outcome.output) == {r["custom_id"] for r in requests} and not outcome.errors
    detail = admin(gateway, f"/batches/{batch.id}")
    retries = [d for d in detail["decisions"] if d["kind"] == "retry"]
    assert retries and all(d["chosen_provider"] == "cheap" for d in retries)
    assert max(s["generation"] for s in detail["shards"]) >= 1
    served = batch_creates(emulator_log(simulator, "fast"))
    assert len(served) == len(detail["shards"])
    assert float((batch.metadata or {})["gateway_cost_usd"]) == pytest.approx(
        expected_cost(outcome, BATCH_RATES), abs=1e-6
    )


def test_a_stalled_provider_batch_is_abandoned_and_rerouted(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(
        gateway_factory,
        simulator,
        tmp_path,
        cheap="fast",
        pricey="other",
        env={"BATCHGW_ROUTING__STALL_TIMEOUT_S": "2"},
    )
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", stall=True)
    requests = chat_requests(20)
    batch = wait_for(client, submit(client, requests).id, timeout=90)
    outcome = collect(client, batch)
    assert batch.status == "completed"
    assert set(outcome.output) == {r["custom_id"] for r in requests} and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"pricey"}
    detail = admin(gateway, f"/batches/{batch.id}")
    [failover] = [d for d in detail["decisions"] if d["kind"] == "failover"]
    assert "no progress" in failover["cause"] and failover["chosen_provider"] == "pricey"
    cancels = [e for e in emulator_log(simulator, "fast") if e["path"].endswith("/cancel")]
    assert cancels, "the stalled provider batch was not cancelled"


def test_a_pinned_provider_that_is_down_fails_the_batch_instead_of_moving_it(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other")
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", down="refuse")
    requests = chat_requests(5, model="cheap/gpt-4o-mini")
    batch = wait_for(client, submit(client, requests).id, timeout=60)
    assert batch.status == "failed", batch
    assert batch.errors is not None and batch.errors.data
    message = batch.errors.data[0].message or ""
    assert "cheap" in message and "pins" in message, message
    outcome = collect(client, batch)
    assert set(outcome.errors) == {r["custom_id"] for r in requests} and not outcome.output
    assert not emulator_log(simulator, "other"), "a pinned batch reached another provider"


def test_routing_hints_are_checked_when_the_batch_is_created(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other")
    client = gateway.client(gateway.create_key("acme"))
    content = "".join(json.dumps(r) + "\n" for r in chat_requests(3)).encode()
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    cases = {
        "policy": ({"policy": "fastest"}, "unknown policy 'fastest'"),
        "deadline": ({"deadline": "soon"}, "deadline 'soon'"),
        "providers": ({"providers": "cheap,nowhere"}, "unknown provider 'nowhere'"),
        "cost": ({"max_cost_usd": "lots"}, "max_cost_usd 'lots'"),
        "canary": ({"canary": "-5"}, "canary"),
    }
    for metadata, message in cases.values():
        with pytest.raises(openai.BadRequestError) as raised:
            client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
            )
        assert message in str(raised.value), (metadata, str(raised.value))


def test_unknown_model_fails_with_its_line_and_close_matches(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="other")
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(3) + chat_requests(1, model="gpt-4o-mimi", prefix="typo")
    batch = wait_for(client, submit(client, requests).id)
    assert batch.status == "failed" and batch.errors is not None
    [error] = batch.errors.data
    assert error.code == "model_not_found" and error.line == 4
    message = error.message or ""
    assert "'gpt-4o-mimi'" in message and "did you mean 'gpt-4o-mini'" in message and message.endswith("'?")


def test_a_deadline_inside_the_escalation_margin_still_runs_on_the_batch_tier_it_fits(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # Both providers sell batches only, and both are seen to finish in seconds: a 10-minute deadline fits them,
    # though it is shorter than the 15 minutes before a deadline at which a provider batch still running is moved.
    gateway = start_gateway(gateway_factory, simulator, tmp_path, cheap="steady", pricey="slow")
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(20)
    seen = wait_for(client, create_batch(client, requests, {"policy": "deadline"}))
    assert seen.status == "completed"
    batch = wait_for(client, create_batch(client, requests, {"policy": "deadline", "deadline": "10m"}))
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == 20 and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"cheap"}
    [decision] = admin(gateway, f"/batches/{batch.id}")["decisions"]
    assert decision["chosen_provider"] == "cheap" and "fits deadline 10m" in decision["reason"]
    assert control(simulator, "GET", "/providers/steady/stats")["batches"] == {"completed": 2}
    assert not emulator_log(simulator, "slow"), "the batch was moved off the provider it fits"
    assert admin(gateway, "/providers")["data"][0]["health"]["circuit"] == "closed"


def test_spread_policy_splits_by_weight_and_a_third_party_policy_plugs_in(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    package = tmp_path / "plugin"
    package.mkdir()
    (package / "acme_priciest.py").write_text(
        textwrap.dedent(
            """
            from router_policies.base import Candidate, estimate_cost, is_usable

            class PriciestPolicy:
                name = "priciest"

                def rank(self, job, offers, states):
                    usable = [o for o in offers if is_usable(states.get(o.provider))]
                    priced = [(estimate_cost(o, job.est_input_tokens, job.est_output_tokens), o) for o in usable]
                    priced.sort(key=lambda row: -row[0])
                    return [Candidate(o, cost, f"most expensive first: ${cost:.4f}") for cost, o in priced]
            """
        )
    )
    dist_info = package / "acme_priciest-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-priciest\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[batch_gateway.policies]\npriciest = acme_priciest:PriciestPolicy\n")
    import os

    pythonpath = os.pathsep.join(filter(None, [str(package), os.environ.get("PYTHONPATH")]))
    gateway = start_gateway(
        gateway_factory, simulator, tmp_path, cheap="fast", pricey="other", env={"PYTHONPATH": pythonpath}
    )
    client = gateway.client(gateway.create_key("acme"))

    content = "".join(json.dumps(r) + "\n" for r in chat_requests(10)).encode()
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    plugged = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"policy": "priciest"}
    )
    spread = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"policy": "spread", "weights": "cheap=3,pricey=2"},
    )
    plugged_outcome = collect(client, wait_for(client, plugged.id))
    assert {line["provider"] for line in plugged_outcome.output.values()} == {"pricey"}
    assert "most expensive first" in admin(gateway, f"/batches/{plugged.id}")["decisions"][0]["reason"]

    spread_outcome = collect(client, wait_for(client, spread.id))
    served = [line["provider"] for line in spread_outcome.output.values()]
    assert sorted(served) == ["cheap"] * 6 + ["pricey"] * 4


def test_with_no_other_provider_an_outage_is_waited_out_not_failed(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    providers = {"only": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}}}
    env = simulated_provider_env(simulator, tmp_path, providers) | ROUTING_ENV
    env["BATCHGW_ROUTING__CIRCUIT_COOLDOWN_S"] = "1"
    gateway = gateway_factory(env).start()
    client = gateway.client(gateway.create_key("acme"))
    set_faults(simulator, "fast", down="refuse")
    requests = chat_requests(10)
    batch = submit(client, requests)
    deadline = time.monotonic() + 30
    while admin(gateway, "/providers")["data"][0]["health"]["circuit"] != "open":
        assert time.monotonic() < deadline, "the outage never opened the circuit"
        time.sleep(0.2)
    time.sleep(3)  # longer than provider_down_failover_s: with nowhere else to go, the shard waits
    assert client.batches.retrieve(batch.id).status == "in_progress"
    set_faults(simulator, "fast", down="off")
    batch = wait_for(client, batch.id, timeout=60)
    outcome = collect(client, batch)
    assert batch.status == "completed" and set(outcome.output) == {r["custom_id"] for r in requests}
    assert admin(gateway, "/providers")["data"][0]["health"]["circuit"] == "closed"


def test_a_short_deadline_falls_back_to_synchronous_fan_out(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    providers = {
        "cheap": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
        "pricey": {
            "emulator": "other",
            "kind": "openai_sync",
            "models": {"gpt-4o-mini": "gpt-4o-mini"},
            "limits": {"requests_per_minute": 6000, "max_concurrency": 8},
        },
    }
    env = simulated_provider_env(simulator, tmp_path, providers) | ROUTING_ENV
    env["BATCHGW_CATALOG__FILE"] = str(write_catalog(tmp_path, {"cheap": CHEAP, "pricey": PRICEY}))
    gateway = gateway_factory(env).start()
    client = gateway.client(gateway.create_key("acme"))
    requests = chat_requests(12)
    # With no turnaround observed yet, a batch tier is assumed to take its 24 h: too slow for 1 h.
    urgent = wait_for(client, create_batch(client, requests, {"policy": "deadline", "deadline": "1h"}))
    relaxed = wait_for(client, create_batch(client, requests, {"policy": "deadline"}))
    assert {line["provider"] for line in collect(client, relaxed).output.values()} == {"cheap"}
    assert {line["provider"] for line in collect(client, urgent).output.values()} == {"pricey"}
    [decision] = admin(gateway, f"/batches/{urgent.id}")["decisions"]
    assert decision["chosen_provider"] == "pricey" and "sync fan-out tier" in decision["reason"]
    assert "too slow for the deadline" in decision["reason"]
    sync_rates = {"pricey": PRICEY["sync"]}
    assert float((urgent.metadata or {})["gateway_cost_usd"]) == pytest.approx(
        expected_cost(collect(client, urgent), sync_rates), abs=1e-6
    )
    # Now the cheap batch provider has been seen to finish in seconds: the same deadline fits it.
    observed = wait_for(client, create_batch(client, requests, {"policy": "deadline", "deadline": "1h"}))
    assert {line["provider"] for line in collect(client, observed).output.values()} == {"cheap"}
    turnaround = {p["name"]: p["turnaround"] for p in admin(gateway, "/providers")["data"]}["cheap"]
    assert turnaround["gpt-4o-mini"]["samples"] >= 1 and turnaround["gpt-4o-mini"]["p90_s"] < 60


def test_routing_estimates_from_the_figures_the_files_check_kept_without_reading_it(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    """The API alone takes two uploads of over 1 MB, checked while they arrive, and keeps each one's requests'
    figures beside it. With the first one's figures doctored (every body a hundred times its size), a worker
    started afterwards routes on them: its estimate holds a hundred times the input tokens a read finds. The second
    one's figures are cut short, so they do not match the file and routing reads it instead."""
    gateway = start_gateway(gateway_factory, simulator, tmp_path, env={"BATCHGW_WORKER__ENABLED_IN_SERVE": "false"})
    client = gateway.client(gateway.create_key("acme"))
    requests = [chat_request(f"req-{i:05d}", f"question {i}: " + "why " * (i % 90)) for i in range(4000)]
    content = "".join(json.dumps(r) + "\n" for r in requests).encode()
    assert len(content) > 1 << 20
    files = [client.files.create(file=("input.jsonl", content), purpose="batch") for _ in range(2)]
    stored = [gateway.data_dir / "blobs" / "files" / f"{file.id}.figures" for file in files]
    assert all(path.is_file() for path in stored), "no figures were kept at upload"

    doctored = LineFigures.from_bytes(stored[0].read_bytes())
    assert doctored is not None and len(doctored) == 4000
    doctored.body_bytes = array("I", [size * 100 for size in doctored.body_bytes])
    stored[0].write_bytes(doctored.to_bytes())
    cut = LineFigures.from_bytes(stored[1].read_bytes())
    assert cut is not None
    cut.name_of_line, cut.body_bytes, cut.caps = cut.name_of_line[:-1], cut.body_bytes[:-1], cut.caps[:-1]
    stored[1].write_bytes(cut.to_bytes())

    batches = [client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h") for file in files]
    worker = worker_process(gateway, "worker").start("worker")
    try:
        done = [wait_for(client, batch.id, timeout=120) for batch in batches]
    finally:
        worker.stop()
    assert [batch.status for batch in done] == ["completed", "completed"]
    # The estimate routing priced the batch with: the same output estimate for both, input at the cheap batch rate.
    estimated = [
        query(gateway, "SELECT estimated_cost_usd FROM batches WHERE id = :b", b=batch.id)[0][0] for batch in done
    ]
    body_sizes = [len(json.dumps(r["body"])) for r in requests]
    input_rate = CHEAP["batch"][0] / 1_000_000
    extra_input = sum(size * 100 // 4 for size in body_sizes) - sum(size // 4 for size in body_sizes)
    assert estimated[0] - estimated[1] == pytest.approx(extra_input * input_rate, rel=1e-9)
