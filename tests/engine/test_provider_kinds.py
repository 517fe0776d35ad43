"""The same OpenAI-format input file, run on each of the four provider kinds (OpenAI batch protocol,
Anthropic Message Batches, Gemini batch mode, synchronous fan-out), gives equivalent output files:
one line per custom_id with the same content, finish reason and token counts; and each batch's cost,
in its metadata and in the ledger, is exactly the tokens the emulator reported times the offer's price
(the batch rate for provider batches, the synchronous rate for fan-out).

The emulators of all protocols share one deterministic model, so equal answers are expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import ENGINE_ENV, GatewayProcess
from tests.engine import CHAT, Outcome, collect, query, submit, wait_for

EMULATED_MODEL = "shared-model"
PRICES = {
    # gateway provider: (sync input, sync output, batch input, batch output) USD per MTok
    "openai": (0.15, 0.60, 0.075, 0.30),
    "anthropic": (1.00, 5.00, 0.50, 2.50),
    "gemini": (0.30, 2.50, 0.15, 1.25),
    "fanout": (0.27, 1.10, None, None),
}
KINDS = {
    # gateway provider: (adapter kind, emulator kind, base path)
    "openai": ("openai", "openai", "/v1"),
    "anthropic": ("anthropic", "anthropic", ""),
    "gemini": ("gemini", "gemini", ""),
    "fanout": ("openai_sync", "openai", "/v1"),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name=f"{name}-emu", kind=emulator_kind, models=[EMULATED_MODEL], processing_delay_s=0.2)
        for name, (_, emulator_kind, _) in KINDS.items()
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, cluster: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    lines = []
    for name, (adapter_kind, _, base_path) in KINDS.items():
        port = cluster.port_of(f"{name}-emu")
        lines += [
            f"[providers.{name}]",
            f"kind = {json.dumps(adapter_kind)}",
            f"base_url = {json.dumps(f'http://127.0.0.1:{port}{base_path}')}",
            f"models = {{ {json.dumps(f'via-{name}')} = {json.dumps(EMULATED_MODEL)} }}",
            "",
        ]
    folder = tmp_path_factory.mktemp("providers")
    path = folder / "providers.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    catalog = ["schema_version = 1", ""]
    for name, (sync_in, sync_out, batch_in, batch_out) in PRICES.items():
        catalog += [
            f'[models."via-{name}"]',
            f'[[models."via-{name}".offers]]',
            f'provider = "{name}"',
            f'provider_model = "{EMULATED_MODEL}"',
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
    env = {"BATCHGW_CONFIG_FILE": str(path), "BATCHGW_CATALOG__FILE": str(folder / "catalog.toml"), **ENGINE_ENV}
    return gateway_factory(env).start()  # type: ignore[no-any-return]


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


def run_on(client: openai.OpenAI, provider: str) -> Outcome:
    requests = [{**r, "body": {**r["body"], "model": f"via-{provider}"}} for r in REQUESTS]
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


def test_four_kinds_give_equivalent_outputs_at_exact_prices(client: openai.OpenAI, gateway: GatewayProcess) -> None:
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
        assert ledger_mode == ("sync" if provider == "fanout" else "batch") and requests == len(REQUESTS)
