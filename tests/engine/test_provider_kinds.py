"""The same OpenAI-format input file, run on each of the four provider kinds (OpenAI batch protocol,
Anthropic Message Batches, Gemini batch mode, synchronous fan-out), gives equivalent output files:
one line per custom_id with the same content, finish reason and token counts.

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
from tests.engine import CHAT, Outcome, collect, submit, wait_for

EMULATED_MODEL = "shared-model"
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
    path = tmp_path_factory.mktemp("providers") / "providers.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return gateway_factory({"BATCHGW_CONFIG_FILE": str(path), **ENGINE_ENV}).start()  # type: ignore[no-any-return]


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


def test_four_kinds_give_equivalent_outputs(client: openai.OpenAI) -> None:
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
