"""A bedrock-kind provider end to end: the official SDK sends OpenAI batches to ``batchgw serve``, which writes
records to a real S3-wire server, runs them as Bedrock batch inference jobs on the emulator and answers
OpenAI-format lines. Bedrock jobs need at least 100 records, so smaller work (a small batch, the retry of a few
failed requests, the unfinished rest of a job) goes to the other provider, and the routing decision says why."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster, text_tokens
from tests.conftest import ENGINE_ENV, S3_TEST_CREDENTIALS, GatewayProcess, S3Server
from tests.engine import (
    CHAT,
    EMBEDDINGS,
    ROUTING_ENV,
    admin,
    collect,
    create_batch,
    embedding_request,
    query,
    reset,
    set_faults,
    submit,
    wait_for,
    wait_frozen,
    worker_killed_at,
    worker_process,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-v4:0"
MINIMUM = 100
ROLE = "arn:aws:iam::123456789012:role/BatchInference"
PRICES = {
    # (logical model, provider): (provider model, batch input, batch output) USD per MTok
    ("claude-haiku", "bedrock"): (CLAUDE, 0.125, 0.625),
    ("claude-haiku", "fallback"): ("claude-on-openai", 0.50, 2.50),
    ("claude-bedrock-only", "bedrock"): (CLAUDE, 0.125, 0.625),
    ("embed", "bedrock"): (TITAN, 0.01, 0.0),
    ("embed", "fallback"): ("embed-on-openai", 0.02, 0.0),
    ("embed-cohere", "bedrock"): (COHERE, 0.06, 0.0),
    ("embed-cohere", "fallback"): ("embed-on-openai", 0.10, 0.0),
}
CREATED = "submit.after_provider_create"
LEASE_S = 3.0


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server, aws_env: None) -> Iterator[SimulatorCluster]:
    """The Bedrock emulator reads and writes the test S3 server with the test credentials, as the gateway does."""
    specs = [
        ProviderSpec(
            name="bedrock-emu",
            kind="bedrock",
            models=[CLAUDE, TITAN, COHERE],
            processing_delay_s=0.5,
            s3_endpoint_url=s3_server.endpoint_url,
            min_records=MINIMUM,
        ),
        ProviderSpec(name="fallback-emu", models=["claude-on-openai", "embed-on-openai"], processing_delay_s=0.2),
    ]
    with SimulatorCluster(specs, control_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def gateway_env(
    cluster: SimulatorCluster, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    bucket = s3_server.new_bucket()
    folder = tmp_path_factory.mktemp("providers")
    options = {
        "role_arn": ROLE,
        "s3_uri": f"s3://{bucket}/bedrock",
        "s3_endpoint_url": s3_server.endpoint_url,
        "s3_allow_http": True,
        "region": "us-east-1",
    }
    lines = []
    for name in ("bedrock", "fallback"):
        models = {logical: model for (logical, provider), (model, _, _) in PRICES.items() if provider == name}
        lines += [
            f"[providers.{name}]",
            f"kind = {json.dumps('bedrock' if name == 'bedrock' else 'openai')}",
            f"base_url = {json.dumps(cluster.base_url(f'{name}-emu'))}",
            "models = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in models.items()) + " }",
            *(
                ["options = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + " }"]
                if name == "bedrock"
                else []
            ),
            "",
        ]
    (folder / "providers.toml").write_text("\n".join(lines), encoding="utf-8")
    catalog = ["schema_version = 1", ""]
    for logical in ("claude-haiku", "claude-bedrock-only", "embed", "embed-cohere"):
        catalog += [f'[models."{logical}"]']
        for (model_name, provider), (model, batch_in, batch_out) in PRICES.items():
            if model_name != logical:
                continue
            catalog += [
                f'[[models."{logical}".offers]]',
                f'provider = "{provider}"',
                f'provider_model = "{model}"',
                'modes = ["batch"]',
                f"input_per_mtok = {batch_in * 2}",
                f"output_per_mtok = {batch_out * 2}",
                f"batch_input_per_mtok = {batch_in}",
                f"batch_output_per_mtok = {batch_out}",
                'source = "test prices"',
                "as_of = 2026-12-01",
                "",
            ]
    (folder / "catalog.toml").write_text("\n".join(catalog), encoding="utf-8")
    return {
        "BATCHGW_CONFIG_FILE": str(folder / "providers.toml"),
        "BATCHGW_CATALOG__FILE": str(folder / "catalog.toml"),
        **S3_TEST_CREDENTIALS,
        **ENGINE_ENV,
        **ROUTING_ENV,
    }


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, gateway_env: dict[str, str]) -> GatewayProcess:
    return gateway_factory(gateway_env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def fresh_emulators(cluster: SimulatorCluster) -> None:
    reset(cluster, "bedrock-emu", "fallback-emu")


def chat_lines(count: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i:05d}",
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": "claude-haiku",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 20,
            },
        }
        for i in range(count)
    ]


def providers_of(outcome: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in outcome.output.values():
        found[line["provider"]] = found.get(line["provider"], 0) + 1
    return found


def test_a_batch_runs_on_bedrock_and_one_below_its_minimum_goes_elsewhere_saying_why(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster, s3_server: S3Server
) -> None:
    large = collect(client, wait_for(client, submit(client, chat_lines(150)).id, timeout=120))
    assert large.batch.status == "completed" and not large.errors
    assert len(large.output) == 150 and providers_of(large) == {"bedrock": 150}
    assert all(line["response"]["status_code"] == 200 for line in large.output.values())
    [job] = cluster.state("bedrock-emu").jobs.values()
    assert job.total == 150
    [(cost, requests)] = query(
        gateway, "SELECT SUM(cost_usd), SUM(requests) FROM ledger WHERE batch_id = :b", b=large.batch.id
    )
    tokens_in = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in large.output.values())
    tokens_out = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in large.output.values())
    assert requests == 150 and cost == pytest.approx((tokens_in * 0.125 + tokens_out * 0.625) / 1e6, rel=1e-9)

    small = collect(client, wait_for(client, submit(client, chat_lines(30, "s")).id, timeout=120))
    assert small.batch.status == "completed" and providers_of(small) == {"fallback": 30}
    [decision] = admin(gateway, f"/batches/{small.batch.id}")["decisions"]
    assert decision["chosen_provider"] == "fallback"
    assert "passed over, 30 requests: bedrock takes batches of at least 100" in decision["reason"]
    assert len(cluster.state("bedrock-emu").jobs) == 1

    only_bedrock = [{**line, "body": {**line["body"], "model": "claude-bedrock-only"}} for line in chat_lines(10)]
    refused = wait_for(client, submit(client, only_bedrock).id, timeout=60)
    assert refused.status == "failed" and refused.errors is not None
    [error] = refused.errors.data
    assert "bedrock: takes batches of at least 100 requests, this part has 10" in (error.message or "")


def test_an_expiring_job_hands_its_unfinished_records_on(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    set_faults(cluster, "bedrock-emu", expire=True, expire_after_fraction=0.5)
    outcome = collect(client, wait_for(client, submit(client, chat_lines(200, "x")).id, timeout=120))
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 200
    statuses = [job.status for job in cluster.state("bedrock-emu").jobs.values()]
    assert statuses == ["expired"]  # half the records ran
    seen = query(gateway, "SELECT provider, provider_status FROM shards WHERE batch_id = :b", b=outcome.batch.id)
    assert ("bedrock", "PartiallyCompleted") in [tuple(row) for row in seen]
    assert providers_of(outcome) == {"bedrock": 100, "fallback": 100}


def test_a_canary_on_bedrock_is_raised_to_its_minimum_and_dropped_when_the_rest_would_fall_below(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    sizes = {}
    for count in (250, 150):
        batch_id = create_batch(client, chat_lines(count, f"c{count}"), {"canary": "10"})
        outcome = collect(client, wait_for(client, batch_id, timeout=120))
        assert outcome.batch.status == "completed" and providers_of(outcome) == {"bedrock": count}
        sizes[count] = query(
            gateway, "SELECT canary, request_count FROM shards WHERE batch_id = :b ORDER BY seq", b=batch_id
        )
    assert [(bool(canary), n) for canary, n in sizes[250]] == [(True, MINIMUM), (False, 150)]
    assert [(bool(canary), n) for canary, n in sizes[150]] == [(False, 150)]


def test_a_split_that_would_leave_bedrock_below_its_minimum_is_not_made(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    used = {}
    for count in (150, 250):  # halves of 75 (below the minimum) and 125 (above it)
        batch_id = create_batch(
            client, chat_lines(count, f"w{count}"), {"policy": "spread", "weights": "bedrock=1,fallback=1"}
        )
        outcome = collect(client, wait_for(client, batch_id, timeout=120))
        assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == count
        used[count] = providers_of(outcome)
        [decision] = admin(gateway, f"/batches/{batch_id}")["decisions"]
        assert decision["chosen_provider"] == ",".join(used[count])
    assert len(used[150]) == 1 and sum(used[150].values()) == 150
    assert used[250] == {"bedrock": 125, "fallback": 125}


def test_failed_records_are_retried_elsewhere_when_too_few_for_a_bedrock_job(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    set_faults(cluster, "bedrock-emu", fail_fraction=0.1)
    outcome = collect(client, wait_for(client, submit(client, chat_lines(120, "f")).id, timeout=120))
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 120
    used = providers_of(outcome)
    assert used["bedrock"] > 90 and 0 < used["fallback"] < MINIMUM
    assert len(cluster.state("bedrock-emu").jobs) == 1
    retry = [d for d in admin(gateway, f"/batches/{outcome.batch.id}")["decisions"] if d["kind"] == "retry"]
    assert retry and all("bedrock takes batches of at least 100" in d["reason"] for d in retry)


def test_bedrock_going_down_mid_job_moves_the_work_to_the_other_provider(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    gateway = gateway_factory(gateway_env).start()  # its own: the circuit it opens stays open for the module
    client = gateway.client(gateway.create_key("outage"))
    set_faults(cluster, "bedrock-emu", stall=True)  # the job waits in Scheduled: Bedrock goes down mid-job
    batch = submit(client, chat_lines(120, "o"))
    deadline = time.monotonic() + 60
    while not cluster.state("bedrock-emu").jobs:
        assert time.monotonic() < deadline, "nothing reached Bedrock"
        time.sleep(0.05)
    set_faults(cluster, "bedrock-emu", down="refuse")
    outcome = collect(client, wait_for(client, batch.id, timeout=120))
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 120
    assert providers_of(outcome) == {"fallback": 120}
    failovers = [d for d in admin(gateway, f"/batches/{batch.id}")["decisions"] if d["kind"] == "failover"]
    assert failovers and all(d["chosen_provider"] == "fallback" and "bedrock" in d["cause"] for d in failovers)


def test_a_worker_killed_right_after_its_create_leaves_one_job_that_the_next_adopts(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    api = gateway_factory(gateway_env).start("serve", "--no-worker")
    client = api.client(api.create_key("crash"))
    jobs = cluster.state("bedrock-emu").jobs
    batch = submit(client, chat_lines(MINIMUM, "k"))
    survivor = worker_killed_at(api, gateway_env, CREATED)
    [created] = list(jobs)
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=120))
    finally:
        survivor.stop()
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == MINIMUM
    assert list(jobs) == [created], "the shard was submitted twice"
    [(provider_batch_id,)] = query(api, "SELECT provider_batch_id FROM shards WHERE batch_id = :b", b=batch.id)
    assert provider_batch_id.endswith(created)
    [(rows, requests)] = query(api, "SELECT COUNT(*), SUM(requests) FROM ledger WHERE batch_id = :b", b=batch.id)
    assert (rows, requests) == (1, MINIMUM)


@pytest.mark.database("sqlite", reason="the backfill measures the provider kind; the database's part is the same")
@pytest.mark.parametrize(("model", "family"), [("embed", "titan"), ("embed-cohere", "cohere")])
def test_an_embeddings_backfill_of_10000_inputs_runs_on_bedrock_billed_at_bedrocks_count(
    model: str, family: str, client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    """Titan answers carry their token counts; Cohere's do not, and share the job manifests' counts."""
    # Accented texts: the gateway's own estimate (UTF-8 bytes / 4) comes out above the emulator's count.
    texts = {f"doc-{i:05d}": f"document number {i}" + " résumé" * (i % 5) for i in range(10_000)}
    requests = [embedding_request(custom_id, text, model=model) for custom_id, text in texts.items()]
    for line in requests:
        line["body"]["dimensions"] = 256
    batch = wait_for(client, submit(client, requests, endpoint=EMBEDDINGS).id, timeout=300)
    outcome = collect(client, batch)
    assert batch.status == "completed" and not outcome.errors and len(outcome.output) == 10_000
    assert providers_of(outcome) == {"bedrock": 10_000}
    sample = outcome.output["doc-04321"]["response"]["body"]
    assert sample["object"] == "list" and len(sample["data"][0]["embedding"]) == 256
    counted = sum(text_tokens(text) for text in texts.values())  # what the emulator bills, as its manifest says
    answered = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in outcome.output.values())
    [(tokens, cost)] = query(gateway, "SELECT SUM(input_tokens), SUM(cost_usd) FROM ledger WHERE batch_id = :b",
                             b=batch.id)  # fmt: skip
    assert answered == tokens == counted
    assert cost == pytest.approx(counted * PRICES[(model, "bedrock")][1] / 1e6, rel=1e-9)


@pytest.mark.database("postgresql", reason="several workers on one database need PostgreSQL")
@pytest.mark.parametrize("point", ["submit.before_provider_create", "submit.after_provider_create"])
def test_a_worker_frozen_past_its_lease_around_its_create_leaves_one_job(
    point: str, gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    """Frozen after the records are in S3 and before the create, the woken worker creates nothing; frozen after
    it, the job it created is the one the live worker found by its name."""
    lease = {"BATCHGW_WORKER__LEASE_S": str(LEASE_S)}
    api = gateway_factory({**gateway_env, **lease}).start("serve", "--no-worker")
    client = api.client(api.create_key("freeze"))
    frozen = worker_process(api, f"frozen-{point}", BATCHGW_FREEZE_AT=point).start("worker")
    workers = [frozen]
    try:
        batch = submit(client, chat_lines(MINIMUM, point.replace(".", "-")))
        wait_frozen(frozen)
        live = worker_process(api, f"live-{point}").start("worker")
        workers.append(live)
        time.sleep(LEASE_S * 1.5)  # the frozen worker's lease has expired: the live worker owns its shard now
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGCONT)
        outcome = collect(client, wait_for(client, batch.id, timeout=120))
        time.sleep(LEASE_S)  # the woken worker has had time to try whatever it was doing
    finally:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
            worker.stop()
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == MINIMUM
    assert providers_of(outcome) == {"bedrock": MINIMUM}
    assert len(cluster.state("bedrock-emu").jobs) == 1, "the shard ran twice at Bedrock"
    [(rows, requests)] = query(api, "SELECT COUNT(*), SUM(requests) FROM ledger WHERE batch_id = :b", b=batch.id)
    assert (rows, requests) == (1, MINIMUM)
