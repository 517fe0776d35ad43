"""Shard input lines as a placement rewrites them: the provider's model id and the service tier asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.billing.estimate import Estimator, LineEstimates, estimate_lines, iter_estimates
from gateway.billing.history import History
from gateway.pipeline.shard_plans import Placement, rewrite_model, split_into_shards
from gateway.providers.config import ProviderLimits

CHAT = "/v1/chat/completions"


def line(**body: object) -> bytes:
    return json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


@pytest.mark.parametrize(
    ("asked", "tier", "sent"),
    [
        (None, "flex", "flex"),
        ("auto", "priority", "priority"),
        ("flex", "standard", None),  # a flex line moved to a standard (or batch) placement
        ("priority", "standard", None),
        ("fast", "standard", None),  # premium tiers the placement did not choose, billed above its rate
        ("ultrafast", "standard", None),
        ("scale", "standard", None),
        ("fast", "flex", "flex"),
        ("auto", "standard", "auto"),  # the client's own value, which any tier accepts
        ("default", "standard", "default"),
        ([], "standard", None),  # not a tier at all: removed, never a crash of the whole routing
        ({"tier": "auto"}, "standard", None),
        (None, "standard", None),
    ],
)
def test_the_placement_sets_the_tier_of_each_line(asked: object, tier: str, sent: str | None) -> None:
    fields = {"model": "logical", "messages": []} | ({} if asked is None else {"service_tier": asked})
    body = json.loads(rewrite_model(line(**fields), "provider-id", tier))["body"]
    assert body["model"] == "provider-id" and body.get("service_tier") == sent


def test_shards_of_a_provider_with_a_minimum_are_evened_out_so_none_falls_below_it(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    (tmp_path / "scratch").mkdir()
    with source.open("wb") as out:
        for number in range(250):
            out.write(json.dumps({"custom_id": f"r{number}", "body": {"model": "m", "messages": []}}).encode() + b"\n")

    def sizes(min_requests: int) -> list[int]:
        limits = ProviderLimits(max_requests_per_batch=100)
        place = Placement("p", "m", "m", "batch", limits, (1.0, 1.0), (2.0, 2.0), min_requests=min_requests)
        plans = split_into_shards(
            source,
            "batch_x",
            CHAT,
            {"m": [place]},
            {"m": 250},
            tmp_path / "scratch",
            lambda batch, seq: f"{batch}/{seq}",
        )
        for plan in plans:
            plan.path.unlink()
        return [plan.request_count for plan in plans]

    assert sizes(1) == [100, 100, 50]
    assert sizes(60) == [84, 84, 82] and max(sizes(60)) <= 100


def _mixed_input(path: Path) -> None:
    """Two models, output caps, a tier asked, a blank line and a custom_id naming the tier field."""
    lines = []
    for number in range(300):
        body: dict[str, object] = {"model": "a" if number % 3 else "b", "messages": [{"content": "x" * number}]}
        if number % 7 == 0:
            body["max_tokens"] = 10 + number
        if number % 11 == 0:
            body["service_tier"] = "priority"
        custom_id = "service_tier" if number == 5 else f"r{number}"
        lines.append(json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}).encode())
    lines.insert(150, b"   ")
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_shards_cut_with_routings_line_estimates_are_those_cut_by_decoding_every_line(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    (tmp_path / "scratch").mkdir()
    _mixed_input(source)
    history = History.of(
        requests=500, output_tokens=60_000, input_tokens=9_000, estimated_input_tokens=10_000,
        histogram={"64": 200, "128": 200, "512": 100},
    )  # fmt: skip
    assert history.usable
    estimator = Estimator(CHAT, histories={"a": history})
    models, lines = estimate_lines(source, CHAT, estimator)
    per_line = list(iter_estimates(source, estimator))
    assert len(lines) == 300
    assert lines.names == ["b", "a"], "each model name is kept once, in the order of the file"
    assert [lines.line(n) for n in range(300)] == [(e.model, e.input_tokens, e.output_tokens) for e in per_line]
    limits = ProviderLimits(max_requests_per_batch=70)
    placements = {
        "a": [Placement("p", "a", "a", "batch", limits, (1.0, 1.0), (2.0, 2.0))],
        "b": [Placement("q", "b-provider", "b", "batch", limits, (1.0, 1.0), (2.0, 2.0))],
    }
    counts = {name: entry.requests for name, entry in models.items()}

    def cut(**known: LineEstimates) -> list[tuple[object, ...]]:
        plans = split_into_shards(
            source, "batch_x", CHAT, placements, counts, tmp_path / "scratch", lambda b, s: f"{b}/{s}", 30, estimator,
            **known,
        )  # fmt: skip
        seen = [
            (p.seq, p.canary, p.placement.provider, p.request_count, p.byte_size, p.input_tokens, p.output_tokens,
             p.path.read_bytes())
            for p in plans
        ]  # fmt: skip
        for plan in plans:
            plan.path.unlink()
        return seen

    decoded, copied = cut(), cut(estimates=lines)
    assert copied == decoded and len(decoded) == 7
    shard_lines = [json.loads(text) for shard in decoded for text in shard[-1].splitlines()]  # type: ignore[union-attr]
    assert {request["body"]["model"] for request in shard_lines} == {"a", "b-provider"}
    assert not any("service_tier" in request["body"] for request in shard_lines), "a batch placement drops priority"

    _mixed_input(source)
    with source.open("ab") as grown:
        grown.write(line(model="a") + b"\n")
    with pytest.raises(RuntimeError, match="more lines than when it was estimated"):
        cut(estimates=lines)
    assert not list((tmp_path / "scratch").iterdir()), "a refused cut leaves no scratch file"
