"""The same OpenAI-format input file, run on each provider kind (the OpenAI batch protocol in OpenAI's, Azure's,
Groq's and Together's dialects, Anthropic Message Batches, Gemini batch mode, Mistral batch jobs, Bedrock batch
inference on Claude with records in a real S3-wire server, OpenRouter batches, synchronous fan-out to OpenAI-compatible
endpoints, Gemini's generateContent and Anthropic's Messages), gives
equivalent output files: one line per custom_id with the same content, finish reason and token counts; and each
batch's cost, in its metadata and in the ledger, is exactly the tokens the emulator reported times the offer's
price (the batch rate for provider batches, the synchronous rate for fan-out; OpenRouter's emulator bills at that
rate, and the ledger takes what it billed). An embeddings batch is routed only to the kinds that serve embeddings,
however cheap the others are.

The emulators of all protocols share one deterministic model, so equal answers are expected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import ENGINE_ENV, S3_TEST_CREDENTIALS, GatewayProcess, S3Server
from tests.engine import (
    CHAT,
    EMBEDDINGS,
    Outcome,
    admin,
    collect,
    embedding_request,
    query,
    submit,
    wait_for,
    worker_killed_at,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

EMULATED_MODEL = "shared-model"
DEPLOYMENT = "shared-model-global-batch"
BEDROCK_MODEL = "anthropic.shared-model-v1:0"
"""Bedrock reads Claude bodies for models of the Anthropic family."""
"""Azure lines carry the deployment's name as their model."""
AZURE_KEY = "azure-key-3f9d0c1b7a"
PRICES = {
    # gateway provider: (sync input, sync output, batch input, batch output) USD per MTok
    "openai": (0.15, 0.60, 0.075, 0.30),
    "azure": (0.16, 0.64, 0.08, 0.32),
    "groq": (0.05, 0.08, 0.025, 0.04),
    "together": (0.06, 0.10, 0.03, 0.05),
    "anthropic": (1.00, 5.00, 0.50, 2.50),
    "gemini": (0.30, 2.50, 0.15, 1.25),
    "mistral": (0.10, 0.30, 0.05, 0.15),
    "bedrock": (0.80, 4.00, 0.40, 2.00),
    "openrouter": (0.20, 0.80, 0.10, 0.40),
    "fanout": (0.27, 1.10, None, None),
    "gemini_sync": (0.30, 2.50, None, None),
    "anthropic_sync": (1.00, 5.00, None, None),
}
KINDS = {
    # gateway provider: (adapter kind, emulator kind, dialect)
    "openai": ("openai", "openai", "openai"),
    "azure": ("openai", "openai", "azure"),
    "groq": ("openai", "openai", "groq"),
    "together": ("openai", "openai", "together"),
    "anthropic": ("anthropic", "anthropic", "openai"),
    "gemini": ("gemini", "gemini", "openai"),
    "mistral": ("mistral", "mistral", "openai"),
    "bedrock": ("bedrock", "bedrock", "openai"),
    "openrouter": ("openrouter", "openrouter", "openai"),
    "fanout": ("openai_sync", "openai", "openai"),
    "gemini_sync": ("gemini_sync", "gemini", "openai"),
    "anthropic_sync": ("anthropic_sync", "anthropic", "openai"),
}
SERVE_EMBEDDINGS = ("openai", "azure", "gemini", "mistral", "openrouter", "fanout", "gemini_sync")
CREATED = "submit.after_provider_create"
ANY_KIND = "any-kind"
"""A model every provider serves, for the routing test."""


def provider_model(name: str) -> str:
    return {"azure": DEPLOYMENT, "bedrock": BEDROCK_MODEL}.get(name, EMULATED_MODEL)


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server, aws_env: None) -> Iterator[SimulatorCluster]:
    """One emulator per kind; Bedrock's takes jobs of any size here (its minimum is tested on its own)."""
    specs = [
        ProviderSpec(
            name=f"{name}-emu",
            kind=emulator_kind,
            dialect=dialect,  # type: ignore[arg-type]
            models=[provider_model(name)],
            processing_delay_s=0.2,
            api_key=AZURE_KEY if name == "azure" else None,
            **({"s3_endpoint_url": s3_server.endpoint_url, "min_records": 1} if name == "bedrock" else {}),  # type: ignore[arg-type]
            # OpenRouter bills in dollars: at the catalog's batch rate here, so every kind's cost compares alike.
            **({"usd_per_mtok": list(PRICES[name][2:])} if name == "openrouter" else {}),  # type: ignore[arg-type]
        )
        for name, (_, emulator_kind, dialect) in KINDS.items()
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def bedrock_settings(s3_server: S3Server) -> list[str]:
    options = {
        "role_arn": "arn:aws:iam::123456789012:role/BatchInference", "s3_uri": f"s3://{s3_server.new_bucket()}/jobs",
        "s3_endpoint_url": s3_server.endpoint_url, "s3_allow_http": True, "region": "us-east-1",
    }  # fmt: skip
    return [
        "options = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + " }",
        "limits = { min_requests_per_batch = 1 }",
    ]


@pytest.fixture(scope="module")
def gateway_env(
    cluster: SimulatorCluster, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment of a gateway on every emulated kind, with the test catalog's prices."""
    lines = []
    for name, (adapter_kind, _, dialect) in KINDS.items():
        served = {f"via-{name}": provider_model(name), ANY_KIND: provider_model(name)}
        lines += [
            f"[providers.{name}]",
            f"kind = {json.dumps(adapter_kind)}",
            f"base_url = {json.dumps(cluster.base_url(f'{name}-emu'))}",
            "models = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in served.items()) + " }",
            *([f"options = {{ dialect = {json.dumps(dialect)} }}"] if dialect != "openai" else []),
            *(['api_key_env = "TEST_AZURE_KEY"'] if name == "azure" else []),
            *(bedrock_settings(s3_server) if name == "bedrock" else []),
            "",
        ]
    folder = tmp_path_factory.mktemp("providers")
    path = folder / "providers.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    catalog = ["schema_version = 1", ""]
    for model in (*(f"via-{name}" for name in PRICES), ANY_KIND):
        catalog += [f'[models."{model}"]']
        for name, (sync_in, sync_out, batch_in, batch_out) in PRICES.items():
            if model not in (f"via-{name}", ANY_KIND):
                continue
            catalog += [
                f'[[models."{model}".offers]]',
                f'provider = "{name}"',
                f'provider_model = "{provider_model(name)}"',
                'modes = ["sync"]' if batch_in is None else 'modes = ["batch"]',
                f"input_per_mtok = {sync_in}",
                f"output_per_mtok = {sync_out}",
                *(
                    []
                    if batch_in is None
                    else [f"batch_input_per_mtok = {batch_in}", f"batch_output_per_mtok = {batch_out}"]
                ),
                'source = "test prices"',
                "as_of = 2026-12-01",
                "",
            ]
    (folder / "catalog.toml").write_text("\n".join(catalog), encoding="utf-8")
    env = {
        "BATCHGW_CONFIG_FILE": str(path),
        "BATCHGW_CATALOG__FILE": str(folder / "catalog.toml"),
        "TEST_AZURE_KEY": AZURE_KEY,
        **S3_TEST_CREDENTIALS,
        **ENGINE_ENV,
        "BATCHGW_ROUTING__MAX_REQUEST_ATTEMPTS": "10",  # requests failing at random get there in the end
    }
    return env


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, gateway_env: dict[str, str]) -> GatewayProcess:
    return gateway_factory(gateway_env).start()  # type: ignore[no-any-return]


def request(custom_id: str, *messages: tuple[str, str], **fields: Any) -> dict[str, Any]:
    body = {"model": "", "messages": [{"role": r, "content": c} for r, c in messages], **fields}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


REQUESTS = [
    request("system", ("system", "Answer tersely."), ("user", "Capital of Peru?"), max_tokens=64),
    request("multi-turn", ("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke")),
    request("stop", ("user", "first. second. third"), stop=[". s"], max_completion_tokens=50),
    request("capped", ("user", "a question long enough to be cut short"), max_tokens=2),
    request("no-max-tokens", ("developer", "Be kind."), ("user", "Where am I?")),
    request("temperature", ("user", "Pick a colour"), temperature=0.2, top_p=0.9),
]


def run_on(client: openai.OpenAI, provider: str, model: str | None = None) -> Outcome:
    requests = [{**r, "body": {**r["body"], "model": model or f"via-{provider}"}} for r in REQUESTS]
    return collect(client, wait_for(client, submit(client, requests).id, timeout=90))


def essentials(outcome: Outcome) -> dict[str, tuple[Any, ...]]:
    """What must agree across kinds: content, finish reason, token counts (ids and timestamps may differ)."""
    result = {}
    for custom_id, line in outcome.output.items():
        body = line["response"]["body"]
        usage = body["usage"]
        choice = body["choices"][0]
        result[custom_id] = (
            choice["message"]["content"],
            choice["finish_reason"],
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"],
        )
    return result


def exact_cost(outcome: Outcome, provider: str) -> tuple[float, float]:
    """(cost, synchronous list cost) of the output lines at the provider's prices."""
    sync_in, sync_out, batch_in, batch_out = PRICES[provider]
    tokens_in = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in outcome.output.values())
    tokens_out = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in outcome.output.values())
    paid = (sync_in, sync_out) if batch_in is None else (batch_in, batch_out)
    return (
        (tokens_in * paid[0] + tokens_out * paid[1]) / 1_000_000,  # type: ignore[operator]
        (tokens_in * sync_in + tokens_out * sync_out) / 1_000_000,
    )


def test_every_kind_gives_equivalent_outputs_at_exact_prices(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    outcomes = {provider: run_on(client, provider) for provider in KINDS}
    reference = essentials(outcomes["openai"])
    assert sorted(reference) == sorted(r["custom_id"] for r in REQUESTS)
    assert reference["stop"][:2] == ("Echo: first", "stop")
    assert reference["capped"][1] == "length"
    for provider, outcome in outcomes.items():
        assert outcome.batch.status == "completed", (provider, outcome.batch)
        assert not outcome.errors, (provider, outcome.errors)
        assert essentials(outcome) == reference, provider
        usage = outcome.batch.usage
        assert usage is not None
        assert usage.input_tokens == sum(v[2] for v in reference.values()), provider
        assert usage.output_tokens == sum(v[3] for v in reference.values()), provider
        cost, list_cost = exact_cost(outcome, provider)
        metadata = outcome.batch.metadata or {}
        assert metadata["gateway_providers"] == provider
        assert float(metadata["gateway_cost_usd"]) == pytest.approx(cost, abs=1e-6), provider
        assert float(metadata["gateway_savings_usd"]) == pytest.approx(list_cost - cost, abs=1e-6), provider
        [(ledger_cost, ledger_list, ledger_mode, requests)] = query(
            gateway,
            "SELECT SUM(cost_usd), SUM(list_cost_usd), MAX(mode), SUM(requests) FROM ledger WHERE batch_id = :b",
            b=outcome.batch.id,
        )
        assert ledger_cost == pytest.approx(cost, rel=1e-9) and ledger_list == pytest.approx(list_cost, rel=1e-9)
        assert ledger_mode == ("sync" if PRICES[provider][2] is None else "batch") and requests == len(REQUESTS)


def test_an_embeddings_batch_goes_only_to_kinds_that_serve_embeddings(
    client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster
) -> None:
    chat = run_on(client, "groq", model=ANY_KIND)
    assert chat.batch.metadata and chat.batch.metadata["gateway_providers"] == "groq"  # the cheapest for chat

    requests = [embedding_request(f"emb-{i}", f"text {i}", model=ANY_KIND) for i in range(5)]
    batch = wait_for(client, submit(client, requests, endpoint=EMBEDDINGS).id, timeout=90)
    outcome = collect(client, batch)
    assert batch.status == "completed" and sorted(outcome.output) == [f"emb-{i}" for i in range(5)]
    assert all(line["response"]["body"]["object"] == "list" for line in outcome.output.values())
    [decision] = admin(gateway, f"/batches/{batch.id}")["decisions"]
    assert decision["chosen_provider"] == "mistral"  # the cheapest that serves embeddings
    assert sorted(c["provider"] for c in decision["candidates"]) == sorted(SERVE_EMBEDDINGS)
    # A model only chat-only providers serve: the batch fails at once, saying why, instead of waiting.
    groq_only = [embedding_request("g-0", "text", model="via-groq")]
    refused = wait_for(client, submit(client, groq_only, endpoint=EMBEDDINGS).id, timeout=60)
    assert refused.status == "failed" and refused.errors is not None
    [error] = refused.errors.data
    assert error.code == "provider_unavailable" and "groq: does not serve /v1/embeddings" in (error.message or "")

    endpoints = {name: {job.endpoint for job in cluster.state(f"{name}-emu").jobs.values()} for name in KINDS}
    assert EMBEDDINGS in endpoints["mistral"]
    assert not any(EMBEDDINGS in endpoints[name] for name in ("groq", "together", "anthropic", "bedrock"))


@pytest.mark.parametrize("provider", ["mistral", "together", "groq", "openrouter"])
def test_requests_a_provider_fails_and_a_429_flood_are_retried_until_the_batch_completes(
    client: openai.OpenAI, cluster: SimulatorCluster, provider: str
) -> None:
    emulator = f"{provider}-emu"
    before = set(cluster.state(emulator).jobs)
    cluster.set_faults(emulator, fail_fraction=0.3, fail_per_batch=True, rate_limit_next=3, retry_after_s=0)
    lines = [request(f"f-{i:02d}", ("user", f"question {i}"), max_tokens=16) for i in range(40)]
    requests = [{**line, "body": {**line["body"], "model": f"via-{provider}"}} for line in lines]
    try:
        outcome = collect(client, wait_for(client, submit(client, requests).id, timeout=120))
    finally:
        cluster.set_faults(emulator, fail_fraction=0.0, fail_per_batch=False, rate_limit_next=0, retry_after_s=1)
    assert outcome.batch.status == "completed" and not outcome.errors and len(outcome.output) == 40
    assert all(line["response"]["status_code"] == 200 for line in outcome.output.values())
    assert len(set(cluster.state(emulator).jobs) - before) >= 2  # the failed requests ran again in a retry


def test_a_together_batch_shows_its_percentage_as_progress_and_is_never_taken_for_stalled(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster
) -> None:
    """Together reports a percentage, not counts: read as requests done, the client sees them rise, and a
    stall timeout shorter than the batch does not cancel it (with counts stuck at 0 it would, and the
    requests would run again elsewhere)."""
    emulator = cluster.state("together-emu")
    gateway = gateway_factory({**gateway_env, "BATCHGW_ROUTING__STALL_TIMEOUT_S": "2.5"}).start()
    client = gateway.client(gateway.create_key("acme"))
    lines = [request(f"t-{i:02d}", ("user", f"question {i}"), max_tokens=8) for i in range(40)]
    requests = [{**line, "body": {**line["body"], "model": "via-together"}} for line in lines]
    before, emulator.processing_delay_s = set(emulator.jobs), 10.0
    try:
        batch = submit(client, requests)
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, "the batch did not end"
            if batch.status == "in_progress" and batch.request_counts is not None:
                seen.add(batch.request_counts.completed)
            time.sleep(0.3)
    finally:
        emulator.processing_delay_s = 0.2
    outcome = collect(client, batch)
    assert outcome.batch.status == "completed" and len(outcome.output) == 40 and not outcome.errors
    assert len(set(emulator.jobs) - before) == 1  # never cancelled as stalled and run again
    assert len({count for count in seen if 0 < count < 40}) >= 2  # the counts rose while it ran


@pytest.mark.database("sqlite", reason="the backfill measures the provider kind; the database's part is the same")
@pytest.mark.parametrize("provider", SERVE_EMBEDDINGS)
def test_an_embeddings_backfill_runs_on_each_kind_that_serves_embeddings(client: openai.OpenAI, provider: str) -> None:
    """10,000 inputs on a batch API; 2,000 on a kind that sends each input as a call of its own, which took 70 s
    of two loaded cores at 10,000 (the fan-out's rate at volume is measured in tests/engine/test_fanout*.py and
    the fan-out benchmark). Bedrock's backfill (Titan bodies) is in its own module."""
    size = 2_000 if KINDS[provider][0].endswith("_sync") else 10_000
    requests = [embedding_request(f"doc-{i:05d}", f"document {i}", model=f"via-{provider}") for i in range(size)]
    batch = wait_for(client, submit(client, requests, endpoint=EMBEDDINGS).id, timeout=300)
    outcome = collect(client, batch)
    assert batch.status == "completed" and not outcome.errors and len(outcome.output) == size
    assert {line["provider"] for line in outcome.output.values()} == {provider}
    assert all(line["response"]["body"]["usage"]["prompt_tokens"] > 0 for line in outcome.output.values())


@pytest.mark.parametrize("provider", ["together", "mistral"])
def test_a_worker_killed_right_after_its_create_leaves_one_batch_that_the_next_adopts(
    gateway_factory: Any, gateway_env: dict[str, str], cluster: SimulatorCluster, provider: str
) -> None:
    """Together keeps no metadata: the next worker finds the batch by the name of the file it was created on.
    Mistral keeps it: the next worker finds the job by its tag."""
    api = gateway_factory(gateway_env).start("serve", "--no-worker")
    client = api.client(api.create_key("crash"))
    jobs = cluster.state(f"{provider}-emu").jobs
    before = set(jobs)
    requests = [{**r, "body": {**r["body"], "model": f"via-{provider}"}} for r in REQUESTS]
    batch = submit(client, requests)
    survivor = worker_killed_at(api, gateway_env, CREATED)
    [created] = set(jobs) - before
    try:
        outcome = collect(client, wait_for(client, batch.id, timeout=90))
    finally:
        survivor.stop()
    assert outcome.batch.status == "completed" and not outcome.errors
    assert sorted(outcome.output) == sorted(r["custom_id"] for r in REQUESTS)
    assert set(jobs) - before == {created}, "the shard was submitted twice"
    [(shard_id, provider_batch_id)] = query(
        api, "SELECT id, provider_batch_id FROM shards WHERE batch_id = :b", b=outcome.batch.id
    )
    assert provider_batch_id == created
    [(rows, requests_paid)] = query(
        api, "SELECT COUNT(*), SUM(requests) FROM ledger WHERE batch_id = :b", b=outcome.batch.id
    )
    assert (rows, requests_paid) == (1, len(REQUESTS)), shard_id
