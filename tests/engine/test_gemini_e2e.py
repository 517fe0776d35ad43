"""A gemini-kind provider end to end: the official SDK sends OpenAI batches to ``batchgw serve``, which runs
them on the Gemini batch emulator, inline and through the File API, and answers OpenAI-format lines."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from gateway.simulator.openai_protocol import chat_completion
from tests.conftest import ENGINE_ENV, GatewayProcess
from tests.engine import CHAT, Outcome, collect, emulator_log, reset, shard_tokens, submit, wait_for

GATEWAY_MODEL = "gemini-flash"
PROVIDER_MODEL = "gemini-2.5-flash"
KEY = "gm-e2e-key-3f9a"
PADDING_LINES = 11
"""Lines of ~1 MB that push a batch past the adapter's default 10 MiB inline threshold."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(name="gem", kind="gemini", models=[PROVIDER_MODEL], api_key=KEY, processing_delay_s=0.2)
    with SimulatorCluster([spec], control_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, cluster: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    config = tmp_path_factory.mktemp("providers") / "providers.toml"
    config.write_text(
        "\n".join(
            [
                "[providers.gem]",
                'kind = "gemini"',
                f"base_url = {json.dumps(cluster.base_url('gem'))}",
                'api_key_env = "BATCHGW_TEST_GEMINI_KEY"',
                f"models = {{ {json.dumps(GATEWAY_MODEL)} = {json.dumps(PROVIDER_MODEL)} }}",
            ]
        ),
        encoding="utf-8",
    )
    env = {"BATCHGW_CONFIG_FILE": str(config), "BATCHGW_TEST_GEMINI_KEY": KEY, **ENGINE_ENV}
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def fresh_emulator(cluster: SimulatorCluster) -> None:
    reset(cluster, "gem")


def line(custom_id: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": GATEWAY_MODEL, "messages": messages, **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


MIXED = [
    line("system", [{"role": "system", "content": "Answer tersely."}, user("What is the capital of Peru?")]),
    line("developer", [{"role": "developer", "content": "Use French."}, user("Bonjour")], max_tokens=40),
    line(
        "multi-turn",
        [
            user("Hi, I have a question."),
            {"role": "assistant", "content": "Sure, go ahead."},
            user("Why is the sky blue?"),
        ],
    ),
    line("adjacent-users", [user("First part."), user("Second part, the one echoed.")]),
    line("stop-list", [user("Count: one two three four")], stop=["three", "four"]),
    line("stop-string", [user("stop at the comma, please")], stop=","),
    line("no-max-tokens", [user("a question long enough to have a few tokens in its answer")]),
    line("max-tokens", [user("a question long enough to be cut short by the cap")], max_tokens=3),
    line("max-completion-tokens", [user("another question that will be cut")], max_completion_tokens=4),
    line("provider-rejects", [{"role": "system", "content": "A system prompt and nothing to answer."}]),
    line("gateway-rejects", [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]),
]
SUCCEEDING = MIXED[:-2]


def assert_mixed_results(outcome: Outcome, padding: Sequence[dict[str, Any]] = ()) -> None:
    """Each mixed request got the OpenAI emulator's answer to it (nothing lost in translation); counts add up."""
    batch = outcome.batch
    assert batch.status == "completed", batch
    assert set(outcome.errors) == {"provider-rejects", "gateway-rejects"}
    assert set(outcome.output) == {r["custom_id"] for r in [*SUCCEEDING, *padding]}
    for request in [*SUCCEEDING, *padding]:
        result = outcome.output[request["custom_id"]]
        assert result["error"] is None and result["response"]["status_code"] == 200
        body = result["response"]["body"]
        direct = chat_completion({**request["body"], "model": PROVIDER_MODEL}, [PROVIDER_MODEL], "x", 0)
        assert body["object"] == "chat.completion" and body["model"] == PROVIDER_MODEL
        assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
        message = {"role": "assistant", "content": direct["choices"][0]["message"]["content"], "refusal": None}
        assert body["choices"][0]["message"] == message
        assert body["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert body["usage"][key] == direct["usage"][key], (request["custom_id"], key)
    choices = {cid: line["response"]["body"]["choices"][0] for cid, line in outcome.output.items()}
    assert choices["max-tokens"]["finish_reason"] == choices["max-completion-tokens"]["finish_reason"] == "length"
    assert choices["no-max-tokens"]["finish_reason"] == choices["stop-list"]["finish_reason"] == "stop"
    assert choices["stop-list"]["message"]["content"] == "Echo: Count: one two "
    provider = outcome.errors["provider-rejects"]["response"]
    assert provider["status_code"] == 400 and provider["body"]["error"]["code"] == "invalid_argument"
    gateway = outcome.errors["gateway-rejects"]["response"]
    assert gateway["status_code"] == 400 and "video_url" in gateway["body"]["error"]["message"]
    counts, usage = batch.request_counts, batch.usage
    assert counts is not None and usage is not None
    assert (counts.total, counts.completed, counts.failed) == (len(MIXED) + len(padding), len(outcome.output), 2)
    usages = [line["response"]["body"]["usage"] for line in outcome.output.values()]
    assert usage.input_tokens == sum(u["prompt_tokens"] for u in usages)
    assert usage.output_tokens == sum(u["completion_tokens"] for u in usages)


def test_mixed_batch_inline(client: openai.OpenAI, gateway: GatewayProcess, cluster: SimulatorCluster) -> None:
    batch = wait_for(client, submit(client, MIXED).id)
    assert_mixed_results(collect(client, batch))
    log = emulator_log(cluster, "gem")
    creates = [e for e in log if e["method"] == "POST" and e["path"].endswith(":batchGenerateContent")]
    assert [e["status"] for e in creates] == [200] and creates[0]["detail"]["source"] is None
    assert creates[0]["detail"]["display_name"] == f"batchgw-{shard_tokens(gateway, batch.id)[0]}"
    assert not [e for e in log if e["path"].startswith("/upload/")]


def test_mixed_batch_through_the_file_api(client: openai.OpenAI, cluster: SimulatorCluster) -> None:
    padding = [line(f"padding-{i:02d}", [user(f"{i} " + "p" * 1_000_000)], max_tokens=5) for i in range(PADDING_LINES)]
    batch = wait_for(client, submit(client, [*MIXED, *padding]).id)
    assert_mixed_results(collect(client, batch), padding)
    log = emulator_log(cluster, "gem")
    uploads = [e for e in log if e["method"] == "POST" and e["path"] == "/upload/v1beta/files"]
    assert [e["status"] for e in uploads] == [200, 200]
    assert uploads[1]["detail"]["lines"] == len(MIXED) - 1 + PADDING_LINES  # all but the untranslatable one
    assert any(e["path"].endswith(":download") for e in log)
