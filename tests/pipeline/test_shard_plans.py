"""Shard input lines as a placement rewrites them: the provider's model id and the service tier asked for."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing.estimate import Estimator, LineEstimates, RequestEstimate, estimate_lines
from gateway.billing.history import History
from gateway.pipeline.shard_plans import Placement, rewrite_model, split_into_shards
from gateway.providers import jsonl
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


def _one_by_one(path: Path, estimator: Estimator) -> list[RequestEstimate]:
    """The estimate of each request line of a file, one line at a time."""
    lines = [raw for raw in path.read_bytes().split(b"\n") if raw.strip()]
    return [estimator.request(bytes(msgspec.json.decode(raw, type=dict[str, msgspec.Raw])["body"])) for raw in lines]


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
    per_line = _one_by_one(source, estimator)
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


@settings(max_examples=150, deadline=None)
@given(
    runs=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 40)), min_size=1, max_size=6),
    odd_lines=st.dictionaries(
        st.integers(0, 200), st.sampled_from(["blank", "crlf", "cr cr lf", "tier", "long"]), max_size=4
    ),
    cap=st.integers(1, 45),
    max_bytes=st.integers(1024, 8000),
    canary=st.integers(0, 30),
    read_bytes=st.integers(60, 8000),
    b_placed=st.sampled_from(["as is", "renamed", "shared"]),
)
def test_shards_cut_a_read_at_a_time_are_those_cut_line_by_line(
    runs: list[tuple[str, int]],
    odd_lines: dict[int, str],
    cap: int,
    max_bytes: int,
    canary: int,
    read_bytes: int,
    b_placed: str,
) -> None:
    """Runs of one model copied at once, through shard caps, byte limits, the canary's end, reads' ends, CRLF,
    blank lines and tier fields, give the shards that placing every decoded line on its own gives."""
    texts: list[bytes] = []
    for model, length in runs:
        for _ in range(length):
            number = len(texts)
            body: dict[str, object] = {"model": model, "messages": [{"content": "x" * (number * 7 % 90)}]}
            kind = odd_lines.get(number)
            if kind == "tier":
                body["service_tier"] = "flex"
            if kind == "long":
                body["messages"] = [{"content": "y" * 9000}]
            text = json.dumps({"custom_id": f"r{number}", "body": body}).encode()
            texts.append(text + {"crlf": b"\r", "cr cr lf": b"\r\r"}.get(kind or "", b""))
            if kind == "blank":
                texts.append(b" ")
    limits = ProviderLimits(max_requests_per_batch=cap, max_bytes_per_batch=max_bytes)

    def place(model: str, provider_model: str, share: float = 1.0) -> Placement:
        return Placement("p", provider_model, model, "batch", limits, (1.0, 1.0), (2.0, 2.0), share=share)

    b_places = {"as is": [place("b", "b")], "renamed": [place("b", "b-id")]}.get(
        b_placed, [place("b", "b", 0.5), place("b", "b-other", 0.5)]
    )
    placements = {"a": [place("a", "a")], "b": b_places}
    estimator = Estimator(CHAT)
    with tempfile.TemporaryDirectory() as folder:
        source, scratch = Path(folder) / "input.jsonl", Path(folder) / "scratch"
        scratch.mkdir()
        source.write_bytes(b"\n".join(texts) + b"\n")
        with patch.object(jsonl, "BLOCK_BYTES", read_bytes):
            models, lines = estimate_lines(source, CHAT, estimator)
            counts = {name: entry.requests for name, entry in models.items()}
            kept = {name: placements[name] for name in counts}

            def cut(known: LineEstimates | None) -> list[tuple[object, ...]]:
                plans = split_into_shards(
                    source, "batch_x", CHAT, kept, counts, scratch, lambda b, s: f"{b}/{s}", canary, estimator, known
                )
                seen = [
                    (p.seq, p.canary, p.placement.provider_model, p.request_count, p.byte_size, p.input_tokens,
                     p.output_tokens, p.path.read_bytes())
                    for p in plans
                ]  # fmt: skip
                for plan in plans:
                    plan.path.unlink()
                return seen

            assert cut(lines) == cut(None)
