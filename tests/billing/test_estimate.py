"""Token estimates: bytes / 4 in (scaled by what the team's history shows), the team's past outputs out (else the
catalog's or the built-in default), capped by max_tokens; nothing out for embeddings. Costs of reported usage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing.estimate import (
    BYTES_PER_TOKEN,
    DEFAULT_OUTPUT_TOKENS,
    Estimator,
    ModelEstimate,
    cache_rates,
    cost_usd,
    estimate_body,
    estimate_file,
    estimate_lines,
    shard_cost,
    usage_cost_usd,
)
from gateway.billing.history import History, Sample
from gateway.catalog.loader import load_catalog
from gateway.db.models import Shard
from gateway.pipeline.results import AnswerBody, TokenUsage, Usage
from gateway.providers import jsonl

CHAT = "/v1/chat/completions"


def body(model: str = "m", **fields: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 400}], **fields}).encode()


def learned(outputs: list[int], scale: float = 1.0) -> History:
    sample = Sample()
    for value in outputs:
        sample.add(value, 0, 0)
    return History.of(
        requests=sample.requests,
        output_tokens=sample.output_tokens,
        input_tokens=int(1000 * scale),
        estimated_input_tokens=1000,
        histogram=sample.histogram,
    )


def test_estimate_body_is_the_upper_bound_for_rate_limits() -> None:
    capped = body(max_tokens=50)
    assert estimate_body(capped, CHAT) == ("m", len(capped) // BYTES_PER_TOKEN, 50)
    assert estimate_body(body(), CHAT)[2] == DEFAULT_OUTPUT_TOKENS
    assert (
        estimate_body(json.dumps({"model": "m", "max_completion_tokens": 7, "max_tokens": 50}).encode(), CHAT)[2] == 7
    )
    assert estimate_body(json.dumps({"model": "e", "input": "hi"}).encode(), "/v1/embeddings")[2] == 0


def test_without_history_the_default_is_capped_by_max_tokens() -> None:
    estimator = Estimator(CHAT, defaults={"big": 900})
    assert estimator.request(body()).output_tokens == DEFAULT_OUTPUT_TOKENS
    assert estimator.request(body(max_tokens=50)).output_tokens == 50
    assert estimator.request(body(max_tokens=5000)).output_tokens == DEFAULT_OUTPUT_TOKENS
    assert estimator.request(body("big")).output_tokens == 900
    assert estimator.basis("m").describe() == f"no history: built-in default ({DEFAULT_OUTPUT_TOKENS} output tokens)"
    assert estimator.basis("big").describe() == "no history: catalog default (900 output tokens)"
    embedding = Estimator("/v1/embeddings").request(json.dumps({"model": "e", "input": "hi"}).encode())
    assert embedding.output_tokens == 0


def test_with_history_outputs_and_inputs_are_learned() -> None:
    history = learned([40] * 60 + [400] * 40, scale=0.5)
    estimator = Estimator(CHAT, histories={"logical": history}, logical=lambda name: "logical")
    request = estimator.request(body("alias"))
    assert request.output_tokens == pytest.approx(184)  # the exact mean
    assert request.output_low == pytest.approx(40, rel=0.1)  # p50
    assert request.output_high == pytest.approx(400, rel=0.1)  # p90
    assert request.input_tokens == round(len(body("alias")) // BYTES_PER_TOKEN * 0.5)
    capped = estimator.request(body("alias", max_tokens=100))
    assert capped.output_tokens < 100 and capped.output_high == 100
    assert estimator.basis("alias").describe() == "from 100 past requests"


def test_learned_estimates_are_the_same_for_every_cap_however_many_a_file_holds() -> None:
    history = learned([40] * 60 + [400] * 40)
    estimator = Estimator(CHAT, histories={"m": history})
    # More distinct caps than an estimator remembers, each asked twice: the remembered and the recomputed agree.
    for cap in [*range(1, 5000, 1), *range(1, 5000, 7)]:
        request = estimator.request(body(max_tokens=cap))
        expected = (history.expected_output(cap), min(history.quantile(0.5), cap), min(history.quantile(0.9), cap))
        assert (request.output_tokens, request.output_low, request.output_high) == pytest.approx(expected), cap
    uncapped = estimator.request(body())
    assert (uncapped.output_tokens, uncapped.output_high) == pytest.approx((184, history.quantile(0.9)))


def test_estimate_file_groups_by_model_with_first_lines_ranges_and_basis(tmp_path: Path) -> None:
    lines = [{"custom_id": f"r{i}", "body": {"model": "a" if i % 3 else "b", "max_tokens": 10}} for i in range(1, 10)]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    models = estimate_file(path, CHAT)
    assert {name: (m.requests, m.first_line, m.output_tokens) for name, m in models.items()} == {
        "a": (6, 1, 60),
        "b": (3, 3, 30),
    }
    history = learned([2] * 50 + [20] * 50)
    models = estimate_file(path, CHAT, Estimator(CHAT, histories={"a": history}))
    a = models["a"]
    assert (a.output_low, a.output_high) == (pytest.approx(12, abs=1), 60)  # p50 ~2, p90 cut at 10, six requests
    assert a.output_tokens == round(6 * history.expected_output(10))
    assert a.basis == "from 100 past requests" and models["b"].basis.startswith("no history")


def test_costs_price_cached_and_cache_write_tokens_at_their_own_rates() -> None:
    assert cost_usd(1_000_000, 2_000_000, (0.5, 1.5)) == 3.5
    usage = {"input": 1_000_000, "output": 1_000_000, "cached": 600_000, "cache_write": 100_000}
    # 300k plain at 1.00, 600k cached at 0.10, 100k written at 1.25, 1M out at 5.00
    assert usage_cost_usd(usage, (1.0, 5.0), (0.10, 1.25)) == pytest.approx(0.3 + 0.06 + 0.125 + 5.0)
    assert usage_cost_usd(usage, (1.0, 5.0)) == pytest.approx(6.0)  # no cache rates: all input at the input rate
    odd = {"input": 10, "output": 0, "cached": 50, "cache_write": 50}  # more cached than input: capped
    assert usage_cost_usd(odd, (1.0, 5.0), (0.0, 2.0)) == 0.0


def test_shipped_cache_rates_and_what_a_shard_pays_for_cached_input() -> None:
    [haiku] = load_catalog().data.models["claude-haiku"].offers
    assert cache_rates(haiku, batch=True) == (0.05, 0.625)  # 0.1x and 1.25x the batch input rate of 0.50
    assert cache_rates(haiku, batch=False) == (0.10, 1.25)
    [mini] = load_catalog().data.models["gpt-4o-mini"].offers
    assert cache_rates(mini, batch=True) == (None, None)  # no cache price: the input rate applies
    shard = Shard(
        batch_id="b", seq=0, provider="anthropic", model="claude-haiku", provider_model="claude-haiku-4-5",
        input_key="k", input_per_mtok=0.50, output_per_mtok=2.50, cached_input_per_mtok=0.05,
        cache_write_per_mtok=0.625, list_input_per_mtok=1.00, list_output_per_mtok=5.00,
    )  # fmt: skip
    usage = {"input": 1_000_000, "output": 100_000, "cached": 800_000, "cache_write": 100_000}
    cost, list_cost = shard_cost(shard, usage)
    assert cost == pytest.approx(0.1 * 0.50 + 0.8 * 0.05 + 0.1 * 0.625 + 0.1 * 2.50)
    assert list_cost == pytest.approx(0.1 * 1.00 + 0.8 * 0.10 + 0.1 * 1.25 + 0.1 * 5.00)  # same discounts, list rate


def test_priority_answers_served_at_the_standard_tier_cost_the_standard_rate() -> None:
    usage = Usage(asked_tier="priority")
    for served, prompt, completion in (("priority", 300_000, 30_000), ("default", 100_000, 10_000), (None, 5, 5)):
        usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=prompt, completion_tokens=completion), service_tier=served))
    totals = usage.as_dict()
    assert (totals["input"], totals["standard_input"], totals["standard_output"]) == (400_005, 100_000, 10_000)
    shard = Shard(
        batch_id="b", seq=0, provider="p", model="m", provider_model="pm", input_key="k", mode="priority",
        input_per_mtok=2.0, output_per_mtok=8.0, list_input_per_mtok=1.0, list_output_per_mtok=4.0,
    )  # fmt: skip
    cost, list_cost = shard_cost(shard, totals, standard_rates=(1.0, 4.0))
    assert cost == pytest.approx((300_005 * 2.0 + 30_005 * 8.0 + 100_000 * 1.0 + 10_000 * 4.0) / 1e6)
    assert list_cost == pytest.approx((400_005 * 1.0 + 40_005 * 4.0) / 1e6)
    assert shard_cost(shard, totals)[0] == pytest.approx(
        (400_005 * 2.0 + 40_005 * 8.0) / 1e6
    )  # no standard price known
    standard_only = Usage()  # a standard shard never splits its usage
    standard_only.add(AnswerBody(usage=TokenUsage(prompt_tokens=7, completion_tokens=3), service_tier="default"))
    assert standard_only.as_dict()["standard_input"] == 0


def test_flex_answers_that_name_no_tier_are_billed_at_the_standard_rate() -> None:
    """A flex price is only earned where the provider says flex served the request; a priority answer that names
    no tier keeps the priority rate (never billed below what it may cost)."""
    flex, priority = Usage(asked_tier="flex"), Usage(asked_tier="priority")
    for usage in (flex, priority):
        usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=100, completion_tokens=10)))
        usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=1_000, completion_tokens=50), service_tier="flex"))
        usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=7, completion_tokens=3), service_tier=["odd"]))
    assert (flex.as_dict()["standard_input"], flex.as_dict()["standard_output"]) == (107, 13)
    assert (priority.as_dict()["standard_input"], priority.as_dict()["standard_output"]) == (0, 0)


def test_answers_whose_charge_the_provider_reported_cost_that_charge_and_the_rest_their_tokens() -> None:
    usage = Usage()
    usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=200_000, completion_tokens=50_000)), billed_usd=0.0123)
    usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=100_000, completion_tokens=10_000)), billed_usd=0.0077)
    usage.add(AnswerBody(usage=TokenUsage(prompt_tokens=1_000_000, completion_tokens=100_000)))  # no charge reported
    totals = usage.as_dict()
    assert usage.billed_usd == pytest.approx(0.02)
    assert (totals["input"], totals["billed_input"], totals["billed_output"]) == (1_300_000, 300_000, 60_000)
    shard = Shard(
        batch_id="b", seq=0, provider="openrouter", model="m", provider_model="pm", input_key="k",
        input_per_mtok=0.5, output_per_mtok=2.0, list_input_per_mtok=1.0, list_output_per_mtok=4.0,
    )  # fmt: skip
    cost, list_cost = shard_cost(shard, totals, billed_usd=usage.billed_usd)
    assert cost == pytest.approx(0.02 + (1_000_000 * 0.5 + 100_000 * 2.0) / 1e6)
    assert list_cost == pytest.approx((1_300_000 * 1.0 + 160_000 * 4.0) / 1e6)  # every token at the list price


@pytest.mark.parametrize("cap", ["100.0", '"100"', "true", "-5", "null"])
def test_a_cap_that_is_not_a_positive_whole_number_keeps_the_model_and_gets_the_default(
    tmp_path: Path, cap: str
) -> None:
    path = tmp_path / "input.jsonl"
    line = '{"custom_id": "%s", "body": {"model": "gpt-4o-mini", "max_tokens": %s, "messages": []}}\n'
    path.write_text(line % ("a", cap) + line % ("b", "40"))
    [(model, estimate)] = estimate_file(path, "/v1/chat/completions").items()
    assert (model, estimate.requests) == ("gpt-4o-mini", 2)
    assert estimate.output_tokens == DEFAULT_OUTPUT_TOKENS + 40


_CAPS = ["", ', "max_tokens": 40', ', "max_completion_tokens": 7, "max_tokens": 90', ', "max_tokens": 0',
         ', "max_tokens": 12.0', ', "max_tokens": "50"', ', "max_tokens": true', ', "max_tokens": [1]',
         ', "max_tokens": 99999999999999999999999', ', "max_completion_tokens": -3, "max_tokens": 64']  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(["a", "b", "ghost"]), st.sampled_from(_CAPS), st.integers(0, 900)), max_size=60
    ),
    blank_every=st.integers(0, 9),
    read_bytes=st.integers(40, 4000),
    endpoint=st.sampled_from([CHAT, "/v1/embeddings"]),
)
def test_a_files_estimates_taken_a_read_at_a_time_are_those_of_each_line_alone(
    requests: list[tuple[str, str, int]], blank_every: int, read_bytes: int, endpoint: str
) -> None:
    """Whatever the caps, models, blank lines and read sizes, reading a file a read at a time counts what
    estimating each request on its own counts (model "a" has a learned history, "b" a catalog default)."""
    lines = []
    for number, (model, cap, size) in enumerate(requests):
        lines.append(f'{{"custom_id": "r{number}", "body": {{"model": "{model}", "text": "{"x" * size}"{cap}}}}}')
        if blank_every and number % blank_every == 0:
            lines.append("  ")
    estimator = Estimator(endpoint, histories={"a": learned([30, 60, 90] * 20, scale=0.7)}, defaults={"b": 77})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_text("\n".join(lines))
        with patch.object(jsonl, "BLOCK_BYTES", read_bytes):
            models, line_estimates = estimate_lines(path, endpoint, estimator)
    alone = [
        estimator.request(bytes(msgspec.json.decode(line, type=dict[str, msgspec.Raw])["body"]), f"r{n}")
        for n, line in enumerate(text for text in lines if text.strip())
    ]
    expected: dict[str, ModelEstimate] = {}
    for number, request in enumerate(alone, 1):
        entry = expected.setdefault(request.model, ModelEstimate(request.model, number, basis=""))
        entry.add(request)
    for entry in expected.values():
        entry.basis = estimator.basis(entry.model).describe()
    assert models == expected
    assert [line_estimates.line(n) for n in range(len(line_estimates))] == [
        (request.model, request.input_tokens, request.output_tokens) for request in alone
    ]
