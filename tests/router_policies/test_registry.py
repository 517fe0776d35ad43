"""Policy lookup, entry-point discovery and hint parsing."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from router_policies.base import PolicyError
from router_policies.cheapest import CheapestPolicy
from router_policies.registry import (
    ENTRY_POINT_GROUP,
    PolicyRegistry,
    UnknownPolicy,
    get_policy,
    parse_duration,
    parse_hints,
)

BUILTINS = ["cheapest", "deadline", "offpeak", "prefer", "spread"]


@pytest.fixture
def registry() -> PolicyRegistry:
    return PolicyRegistry(discover=False)


def test_builtins_and_default(registry: PolicyRegistry) -> None:
    assert registry.names() == BUILTINS
    assert isinstance(get_policy(None, registry), CheapestPolicy)
    for name in BUILTINS:
        assert registry.get(name).name == name


def test_unknown_policy_lists_the_known_names(registry: PolicyRegistry) -> None:
    with pytest.raises(UnknownPolicy, match="unknown policy 'fastest'; known policies: " + ", ".join(BUILTINS)):
        registry.get("fastest")
    assert issubclass(UnknownPolicy, PolicyError) and issubclass(PolicyError, ValueError)


def test_third_party_policy_is_found_through_its_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_routing.py").write_text(
        textwrap.dedent(
            """
            class GreenestPolicy:
                name = "greenest"

                def rank(self, job, offers, states):
                    return []

            NOT_A_POLICY = 42
            """
        )
    )
    dist_info = tmp_path / "acme_routing-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-routing\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "greenest = acme_routing:GreenestPolicy\n"
        "cheapest = acme_routing:GreenestPolicy\n"
        "broken = acme_routing_missing:Policy\n"
        "odd = acme_routing:NOT_A_POLICY\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_routing", raising=False)

    found = PolicyRegistry()
    assert found.get("greenest").name == "greenest"
    assert isinstance(found.get("cheapest"), CheapestPolicy)  # a built-in cannot be replaced
    assert "greenest" in found.names() and "broken" not in found.names()
    with pytest.raises(UnknownPolicy, match=r"'broken' is installed but failed to load .*ModuleNotFoundError"):
        found.get("broken")
    with pytest.raises(UnknownPolicy, match="has no 'name' and 'rank'"):
        found.get("odd")
    assert parse_hints({"policy": "greenest"}, found).policy == "greenest"


def test_parse_hints_reads_every_key(registry: PolicyRegistry) -> None:
    hints = parse_hints(
        {
            "policy": " spread ",
            "deadline": "1h30m",
            "providers": "groq, together",
            "weights": "groq=2,together=1.5",
            "max_cost_usd": "25",
            "tier": " flex",
            "team": "search",
        },
        registry,
    )
    assert hints.policy == "spread"
    assert hints.deadline_s == 5400
    assert hints.providers == ("groq", "together")
    assert dict(hints.weights) == {"groq": 2.0, "together": 1.5}
    assert hints.max_cost_usd == 25.0
    assert hints.tier == "flex"
    assert dict(hints.extra) == {"team": "search"}
    empty = parse_hints(None, registry)
    assert (empty.policy, empty.deadline_s, empty.providers, dict(empty.weights)) == (None, None, (), {})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("1h", 3600), ("24h", 86400), ("2d", 172800), ("1.5h", 5400), ("45s", 45), (" 2H ", 7200)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"policy": "fastest"}, "unknown policy 'fastest'; known policies: cheapest"),
        ({"deadline": "soon"}, "deadline 'soon' is not a duration such as '90m'"),
        ({"deadline": "90"}, "is not a duration"),
        ({"deadline": "1w"}, "is not a duration"),
        ({"deadline": "0h"}, "must be longer than zero"),
        ({"deadline": "31d"}, "longer than the 30d maximum"),
        ({"providers": ""}, "comma-separated list"),
        ({"providers": "groq,,together"}, "comma-separated list"),
        ({"providers": "groq,groq"}, "lists groq more than once"),
        ({"providers": "gr oq"}, "'gr oq' is not a valid provider name"),
        ({"weights": "groq:2"}, "must look like 'groq=2,together=1'"),
        ({"tier": "turbo"}, "tier 'turbo' is not one of batch, standard, flex, priority"),
        ({"weights": "groq=two"}, "weight of groq 'two' is not a number"),
        ({"weights": "groq=-1"}, "must be a finite number >= 0"),
        ({"weights": "groq=0,together=0"}, "at least one weight above 0"),
        ({"weights": "groq=1,groq=2"}, "names 'groq' more than once"),
        ({"max_cost_usd": "$25"}, "max_cost_usd '\\$25' is not a number"),
        ({"max_cost_usd": "inf"}, "finite"),
        ({"max_cost_usd": "0"}, "must be above 0"),
        ({"deadline": 3600}, "metadata value of 'deadline' must be a string"),
    ],
)
def test_bad_hints_are_explained(registry: PolicyRegistry, metadata: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_hints(metadata, registry)
