"""An OpenAI-format batch runs on an Anthropic-protocol provider: the official ``openai`` SDK talks to a
``batchgw serve`` process whose provider is the Message Batches emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from gateway.simulator.openai_protocol import chat_completion
from gateway.translate.custom_ids import provider_custom_id
from tests.conftest import ENGINE_ENV, GatewayProcess
from tests.engine import CHAT, collect, submit, wait_for

KEY = "sk-ant-e2e-3c9d"
CLIENT_MODEL = "claude-haiku"
PROVIDER_MODEL = "claude-haiku-4-5"
LONG_ID = "a custom id with spaces that is also longer than sixty-four characters in total"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(
        name="claude-sim", kind="anthropic", models=[PROVIDER_MODEL], api_key=KEY, processing_delay_s=0.3
    )
    with SimulatorCluster([spec], control_port=None) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, cluster: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    path = tmp_path_factory.mktemp("providers") / "providers.toml"
    path.write_text(
        "[providers.claude]\n"
        'kind = "anthropic"\n'
        f"base_url = {json.dumps(cluster.base_url('claude-sim'))}\n"
        'api_key_env = "ANTHROPIC_SIM_KEY"\n'
        f"models = {{ {json.dumps(CLIENT_MODEL)} = {json.dumps(PROVIDER_MODEL)} }}\n",
        encoding="utf-8",
    )
    env = {"BATCHGW_CONFIG_FILE": str(path), "ANTHROPIC_SIM_KEY": KEY, **ENGINE_ENV}
    return gateway_factory(env).start()


def request(custom_id: str, *messages: tuple[str, str], **fields: Any) -> dict[str, Any]:
    body = {"model": CLIENT_MODEL, "messages": [{"role": r, "content": c} for r, c in messages], **fields}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


REQUESTS = [
    request("system", ("system", "Answer tersely."), ("user", "Capital of Peru?"), max_tokens=64),
    request("multi-turn", ("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke")),
    request("stop", ("user", "first. second. third"), stop=[". s"], max_completion_tokens=50),
    request("capped", ("user", "a question long enough to be cut short"), max_tokens=2),
    request(LONG_ID, ("developer", "Be kind."), ("user", "Where am I?")),
    request("provider-rejects", ("user", "x"), max_tokens=100_000),
    request("gateway-rejects", ("user", "x"), n=2),
]
SUCCEEDING = REQUESTS[:5]


def test_mixed_batch_runs_on_the_anthropic_protocol(client: openai.OpenAI, cluster: SimulatorCluster) -> None:
    earlier_jobs = set(cluster.state("claude-sim").jobs)  # the emulator outlives one database's run
    batch = wait_for(client, submit(client, REQUESTS).id)
    outcome = collect(client, batch)
    assert batch.status == "completed", batch
    assert set(outcome.output) == {r["custom_id"] for r in SUCCEEDING}
    assert set(outcome.errors) == {"provider-rejects", "gateway-rejects"}
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (7, 5, 2)

    input_tokens = output_tokens = 0
    for entry in SUCCEEDING:
        line = outcome.output[entry["custom_id"]]
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["id"].startswith("msg_") and body["object"] == "chat.completion" and body["model"] == PROVIDER_MODEL
        # The OpenAI emulator's answer to the same request: both protocols share the deterministic model.
        expected = chat_completion({**entry["body"], "model": PROVIDER_MODEL}, [PROVIDER_MODEL], "x", 0)
        assert body["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
        assert body["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert body["usage"][key] == expected["usage"][key], (entry["custom_id"], key)
        input_tokens += body["usage"]["prompt_tokens"]
        output_tokens += body["usage"]["completion_tokens"]
    finish = {cid: outcome.output[cid]["response"]["body"]["choices"][0]["finish_reason"] for cid in ("stop", "capped")}
    assert finish == {"stop": "stop", "capped": "length"}
    assert outcome.output["stop"]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: first"
    assert batch.usage is not None and (batch.usage.input_tokens, batch.usage.output_tokens) == (
        input_tokens,
        output_tokens,
    )

    provider = outcome.errors["provider-rejects"]["response"]
    assert provider["status_code"] == 400 and provider["body"]["error"]["code"] == "invalid_request_error"
    gateway_side = outcome.errors["gateway-rejects"]["response"]
    assert gateway_side["status_code"] == 400 and gateway_side["body"]["error"]["param"] == "n"

    jobs = [job for job_id, job in cluster.state("claude-sim").jobs.items() if job_id not in earlier_jobs]
    assert len(jobs) == 1, "one shard, one Message Batch"
    sent = {item.custom_id: item.body for item in jobs[0].items}
    assert provider_custom_id(LONG_ID) in sent and LONG_ID not in sent and "gateway-rejects" not in sent
    assert sent["system"]["system"] == "Answer tersely." and sent["multi-turn"]["max_tokens"] == 4096
