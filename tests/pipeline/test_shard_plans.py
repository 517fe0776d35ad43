"""Shard input lines as a placement rewrites them: the provider's model id and the service tier asked for."""

from __future__ import annotations

import json

import pytest

from gateway.pipeline.shard_plans import rewrite_model


def line(**body: object) -> bytes:
    return json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


@pytest.mark.parametrize(
    ("asked", "tier", "sent"),
    [
        (None, "flex", "flex"),
        ("auto", "priority", "priority"),
        ("flex", "standard", None),  # a flex line moved to a standard (or batch) placement
        ("priority", "standard", None),
        ("auto", "standard", "auto"),  # the client's own value, which any tier accepts
        (None, "standard", None),
    ],
)
def test_the_placement_sets_the_tier_of_each_line(asked: str | None, tier: str, sent: str | None) -> None:
    fields = {"model": "logical", "messages": []} | ({} if asked is None else {"service_tier": asked})
    body = json.loads(rewrite_model(line(**fields), "provider-id", tier))["body"]
    assert body["model"] == "provider-id" and body.get("service_tier") == sent
