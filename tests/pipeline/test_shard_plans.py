"""Shard input lines as a placement rewrites them: the provider's model id and the service tier asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
