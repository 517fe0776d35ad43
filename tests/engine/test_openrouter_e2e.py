"""An openrouter-kind provider end to end: the official SDK sends OpenAI batches to ``batchgw serve``, which runs
them as OpenRouter batches on the emulator. The ledger records what OpenRouter billed (its ``usage.cost``), not
tokens at the catalog's price; a batch above OpenRouter's 5,000 requests is split; a worker killed mid-job leaves
one OpenRouter batch, and one frozen before its create creates none when it wakes; a client's cancel, which
OpenRouter cannot pass on, keeps what the batch answered."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import ENGINE_ENV, GatewayProcess, loopback
from tests.engine import (
    CHAT,
    cancel,
    collect,
    query,
    reset,
    submit,
    wait_for,
    wait_frozen,
    worker_killed_at,
    worker_process,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

KEY = "sk-or-e2e-7f3a2c9d01"
MODEL = "meta-llama/llama-3.3-70b-instruct"
BILLED = (0.11, 0.37)
"""What the emulated OpenRouter bills, USD per million input and output tokens."""
LEASE_S = 3.0
CATALOG = {"sync": (0.20, 0.80), "batch": (0.10, 0.40)}
"""The catalog's prices of the offer: what routing estimates with, not what the ledger records."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(
        name="openrouter-emu",
        kind="openrouter",
        models=[MODEL],
        api_key=KEY,
        processing_delay_s=0.5,
        usd_per_mtok=list(BILLED),
    )
    with SimulatorCluster([spec], control_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def gateway_env(cluster: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("providers")
    (folder / "providers.toml").write_text(
        "[providers.openrouter]\n"
        'kind = "openrouter"\n'
        f"base_url = {json.dumps(cluster.base_url('openrouter-emu'))}\n"
        'api_key_env = "OPENROUTER_SIM_KEY"\n'
        f'models = {{ "llama-70b" = {json.dumps(MODEL)} }}\n',
        encoding="utf-8",
    )
    (folder / "catalog.toml").write_text(
        "schema_version = 1\n\n"
        '[models."llama-70b"]\n'
        '[[models."llama-70b".offers]]\n'
        'provider = "openrouter"\n'
        f"provider_model = {json.dumps(MODEL)}\n"
        'modes = ["batch"]\n'
        f"input_per_mtok = {CATALOG['sync'][0]}\n"
        f"output_per_mtok = {CATALOG['sync'][1]}\n"
        f"batch_input_per_mtok = {CATALOG['batch'][0]}\n"
        f"batch_output_per_mtok = {CATALOG['batch'][1]}\n"
        'source = "test prices"\n'
        "as_of = 2026-12-01\n",
        encoding="utf-8",
    )
    return {
        "BATCHGW_CONFIG_FILE": str(folder / "providers.toml"),
        "BATCHGW_CATALOG__FILE": str(folder / "catalog.toml"),
        "OPENROUTER_SIM_KEY": KEY,
        **ENGINE_ENV,
    }


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, gateway_env: dict[str, str]) -> GatewayProcess:
    return gateway_factory(gateway_env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def fresh_emulator(cluster: SimulatorCluster) -> None:
    reset(cluster, "openrouter-emu")


def chat_lines(count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i:05d}",
            "method": "POST",
            "url": CHAT,
            "body": {"model": "llama-70b", "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 24},
        }
        for i in range(count)
    ]


def openrouter_batch(cluster: SimulatorCluster, batch_id: str) -> dict[str, Any]:
    """The batch object the emulated OpenRouter answers, as a client of OpenRouter reads it."""
    url = f"{cluster.base_url('openrouter-emu')}/batches/{batch_id}"
    answer = loopback.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


def test_the_ledger_records_what_openrouter_billed_not_the_catalog_price(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    outcome = collect(client, wait_for(client, submit(client, chat_lines(30, "b")).id, timeout=90))
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 30
    [(provider_batch_id,)] = query(
        gateway, "SELECT provider_batch_id FROM shards WHERE batch_id = :b", b=outcome.batch.id
    )
    billed = openrouter_batch(cluster, provider_batch_id)["usage"]
    tokens_in = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in outcome.output.values())
    tokens_out = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in outcome.output.values())
    assert (billed["prompt_tokens"], billed["completion_tokens"]) == (tokens_in, tokens_out)
    assert billed["cost"] == pytest.approx((tokens_in * BILLED[0] + tokens_out * BILLED[1]) / 1e6, rel=1e-9)
    [(cost, list_cost, rows)] = query(
        gateway, "SELECT SUM(cost_usd), SUM(list_cost_usd), COUNT(*) FROM ledger WHERE batch_id = :b",
        b=outcome.batch.id,
    )  # fmt: skip
    assert rows == 1 and cost == pytest.approx(billed["cost"], rel=1e-9)
    at_catalog = (tokens_in * CATALOG["batch"][0] + tokens_out * CATALOG["batch"][1]) / 1e6
    assert abs(cost - at_catalog) > 1e-6  # the catalog's price would have given another figure
    assert list_cost == pytest.approx((tokens_in * CATALOG["sync"][0] + tokens_out * CATALOG["sync"][1]) / 1e6)
    metadata = outcome.batch.metadata or {}
    assert float(metadata["gateway_cost_usd"]) == pytest.approx(billed["cost"], abs=1e-6)


def test_a_batch_above_openrouters_5000_requests_runs_as_batches_it_takes(
    client: openai.OpenAI, cluster: SimulatorCluster
) -> None:
    outcome = collect(client, wait_for(client, submit(client, chat_lines(5_200, "s")).id, timeout=180))
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 5_200
    sizes = sorted(len(job.items) for job in cluster.state("openrouter-emu").jobs.values())
    assert len(sizes) >= 2 and max(sizes) <= 5_000 and sum(sizes) == 5_200


def test_a_worker_killed_mid_job_leaves_one_batch_that_the_next_worker_finishes(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    api = gateway_factory(gateway_env).start("serve", "--no-worker")
    client = api.client(api.create_key("crash"))
    batch = submit(client, chat_lines(20, "k"))
    survivor = worker_killed_at(api, gateway_env, "poll.after_status")
    jobs = cluster.state("openrouter-emu").jobs
    [created] = list(jobs)
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=90))
    finally:
        survivor.stop()
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 20
    assert list(jobs) == [created], "the shard was submitted twice"
    [(rows, requests, cost)] = query(
        api, "SELECT COUNT(*), SUM(requests), SUM(cost_usd) FROM ledger WHERE batch_id = :b", b=batch.id
    )
    assert (rows, requests) == (1, 20)
    assert cost == pytest.approx(openrouter_batch(cluster, created)["usage"]["cost"], rel=1e-9)


def test_a_cancelled_batch_waits_for_openrouter_to_end_and_keeps_its_answers(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    batch = submit(client, chat_lines(10, "c"))
    deadline = time.monotonic() + 60
    while not any(job.status == "in_progress" for job in cluster.state("openrouter-emu").jobs.values()):
        assert time.monotonic() < deadline, "the batch never reached OpenRouter"
        time.sleep(0.02)
    cancel(client, batch.id)
    outcome = collect(client, wait_for(client, batch.id, timeout=90))
    assert outcome.batch.status == "cancelled"
    assert len(outcome.output) == 10 and not outcome.errors  # OpenRouter ran it to its end: every answer kept
    [job] = cluster.state("openrouter-emu").jobs.values()
    assert job.status == "completed"
    [(cost,)] = query(gateway, "SELECT SUM(cost_usd) FROM ledger WHERE batch_id = :b", b=batch.id)
    assert cost == pytest.approx(openrouter_batch(cluster, job.id)["usage"]["cost"], rel=1e-9)


@pytest.mark.database("postgresql", reason="several workers on one database need PostgreSQL")
def test_a_worker_frozen_past_its_lease_before_its_create_creates_nothing_when_it_wakes(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    """Frozen just before the create call (SIGSTOP), the worker loses its lease; the live worker submits the
    shard, and the woken one, asking whether it still holds the shard, creates nothing."""
    lease = {"BATCHGW_WORKER__LEASE_S": str(LEASE_S)}
    api = gateway_factory({**gateway_env, **lease}).start("serve", "--no-worker")
    client = api.client(api.create_key("freeze"))
    frozen = worker_process(api, "frozen", BATCHGW_FREEZE_AT="submit.before_provider_create").start("worker")
    workers = [frozen]
    try:
        batch = submit(client, chat_lines(20, "z"))
        wait_frozen(frozen)
        workers.append(worker_process(api, "live").start("worker"))
        time.sleep(LEASE_S * 1.5)  # the frozen worker's lease has expired: the live worker owns its shard now
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGCONT)
        outcome = collect(client, wait_for(client, batch.id, timeout=120))
        time.sleep(LEASE_S)  # the woken worker has had time to try its create
    finally:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
            worker.stop()
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 20
    assert len(cluster.state("openrouter-emu").jobs) == 1, "the shard was created twice at OpenRouter"
    [(rows, requests)] = query(api, "SELECT COUNT(*), SUM(requests) FROM ledger WHERE batch_id = :b", b=batch.id)
    assert (rows, requests) == (1, 20)


def test_a_batch_behind_its_deadline_is_polled_to_its_end_as_openrouter_cannot_cancel(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    """Every batch here is already within the escalation margin of its deadline: the gateway would cancel its
    provider batch and move the rest, but OpenRouter has no cancel, so the shard is simply polled to its end."""
    gateway = gateway_factory({**gateway_env, "BATCHGW_ROUTING__ESCALATE_BEFORE_DEADLINE_S": "86400"}).start()
    client = gateway.client(gateway.create_key("deadline"))
    lines = "".join(json.dumps(line) + "\n" for line in chat_lines(10, "d"))
    file = client.files.create(file=("input.jsonl", lines.encode()), purpose="batch")
    created = client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"policy": "cheapest", "deadline": "2h"},
    )
    outcome = collect(client, wait_for(client, created.id, timeout=90))
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 10
    [(end_reason, last_error)] = query(
        gateway, "SELECT end_reason, last_error FROM shards WHERE batch_id = :b", b=created.id
    )
    assert end_reason == "completed" and last_error is None
    assert [job.status for job in cluster.state("openrouter-emu").jobs.values()] == ["completed"]
    assert "cancelling at openrouter failed" not in gateway.log()  # no cancel tried and failed on every poll
