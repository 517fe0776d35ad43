"""The shipped model catalog and its loader."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from gateway.catalog.loader import Catalog, CatalogError, load_catalog
from gateway.errors import UnknownModel
from router_policies.base import JobFacts, ProviderState
from router_policies.cheapest import CheapestPolicy

REQUIRED = [
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "claude-haiku",
    "claude-sonnet",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "llama-3.3-70b",
    "deepseek-chat",
]

MINIMAL = """
schema_version = 1
[models."m"]
[[models."m".offers]]
provider = "p"
provider_model = "pm"
modes = ["batch"]
input_per_mtok = 1.0
output_per_mtok = 2.0
batch_input_per_mtok = 0.5
batch_output_per_mtok = 1.0
source = "example.com/pricing"
as_of = 2026-01-01
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_shipped_catalog_has_the_expected_models_with_sourced_prices(catalog: Catalog) -> None:
    assert set(REQUIRED) <= set(catalog.names())
    for model, entry in catalog.entries():
        assert entry.source.strip(), model
        assert date(2025, 1, 1) <= entry.as_of <= date(2027, 1, 1), model
        if "batch" in entry.modes and entry.batch_input_per_mtok is not None:
            assert entry.batch_input_per_mtok <= entry.input_per_mtok, model
    assert {o.provider for o in catalog.all_offers()} >= {
        "openai",
        "anthropic",
        "gemini",
        "groq",
        "together",
        "deepseek",
    }


def test_published_prices(catalog: Catalog) -> None:
    mini = {o.mode: o for o in catalog.offers("gpt-4o-mini")}
    assert (mini["batch"].batch_input_per_mtok, mini["batch"].batch_output_per_mtok) == (0.075, 0.30)
    assert (mini["sync"].input_per_mtok, mini["sync"].output_per_mtok) == (0.15, 0.60)
    haiku = catalog.offers("claude-haiku")[0]
    assert (haiku.provider_model, haiku.batch_input_per_mtok, haiku.batch_output_per_mtok) == (
        "claude-haiku-4-5",
        0.50,
        2.50,
    )


def test_unverified_prices_carry_a_note(catalog: Catalog) -> None:
    notes = {entry.pin: entry.note or "" for _, entry in catalog.entries()}
    assert "unverified" in notes["groq/llama-3.3-70b-versatile"].lower()
    assert "unverified" in notes["together/meta-llama/Llama-3.3-70B-Instruct-Turbo"].lower()
    assert "unverified" in notes["deepseek/deepseek-flash"].lower()


def test_deepseek_is_sync_only_with_off_peak_windows(catalog: Catalog) -> None:
    (deepseek,) = catalog.offers("deepseek-chat")
    assert deepseek.mode == "sync"
    assert deepseek.price_windows and all(w.label == "off-peak" for w in deepseek.price_windows)
    assert all(w.input_per_mtok == deepseek.input_per_mtok / 2 for w in deepseek.price_windows)


def test_pins_and_aliases(catalog: Catalog) -> None:
    pinned = catalog.resolve("groq/llama-3.3-70b-versatile")
    assert pinned.model == "llama-3.3-70b" and pinned.pinned_provider == "groq"
    assert {o.provider for o in pinned.offers} == {"groq"} and {o.mode for o in pinned.offers} == {"batch", "sync"}
    assert catalog.resolve("groq/llama-3.3-70b").offers == pinned.offers
    together = catalog.resolve("together/meta-llama/Llama-3.3-70B-Instruct-Turbo")
    assert {o.provider for o in together.offers} == {"together"}
    assert catalog.resolve("claude-haiku-4-5").model == "claude-haiku"
    unpinned = catalog.resolve("llama-3.3-70b")
    assert unpinned.pinned_provider is None and {o.provider for o in unpinned.offers} == {"groq", "together"}


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("gpt4o-mini", "gpt-4o-mini"),
        ("claude-haiku-45", "claude-haiku-4-5"),
        ("grok/llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile"),
    ],
)
def test_unknown_names_suggest_close_matches(catalog: Catalog, name: str, suggestion: str) -> None:
    with pytest.raises(UnknownModel, match=f"unknown model '{name}'; did you mean ") as caught:
        catalog.resolve(name)
    assert suggestion in caught.value.suggestions
    assert repr(suggestion) in str(caught.value)
    assert catalog.close_matches("groq/llama-3.3-70b-versatil")[0] == "groq/llama-3.3-70b-versatile"
    assert catalog.close_matches("qwen-2.5-72b") == []


def test_overrides_replace_prices() -> None:
    changed = load_catalog(
        overrides={"openai/gpt-4o-mini": {"batch_input_per_mtok": 0.07, "as_of": "2026-12-01", "note": "negotiated"}}
    )
    (batch, _) = changed.offers("gpt-4o-mini")
    assert batch.batch_input_per_mtok == 0.07 and batch.batch_output_per_mtok == 0.30
    (entry,) = changed.entry("gpt-4o-mini").offers
    assert entry.as_of == date(2026, 12, 1) and entry.note == "negotiated"
    assert load_catalog().offers("gpt-4o-mini")[0].batch_input_per_mtok == 0.075


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"openai/gpt-4o-mni": {"input_per_mtok": 1}}, "matches no offer.*did you mean openai/gpt-4o-mini"),
        ({"openai/gpt-4o-mini": {"provider": "azure"}}, "cannot change provider"),
        ({"openai/gpt-4o-mini": {"input_per_mtok": -1}}, "input_per_mtok: Input should be greater than or equal to 0"),
        ({"openai/gpt-4o-mini": {"discount": 0.5}}, "unknown field .discount."),
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(overrides=overrides)


def test_a_catalog_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    assert load_catalog(good).names() == ["m"]
    cases = {
        "source": MINIMAL.replace('source = "example.com/pricing"\n', ""),
        "give both": MINIMAL.replace("batch_output_per_mtok = 1.0\n", ""),
        "modes": MINIMAL.replace('modes = ["batch"]', "modes = []"),
        "start and end must differ": MINIMAL
        + '[[models."m".offers.price_windows]]\nstart_utc = "01:00"\nend_utc = "01:00"\n'
        + "input_per_mtok = 1\noutput_per_mtok = 1\n",
        "contain no '/'": MINIMAL.replace('models."m"', 'models."a/m"'),
        "cannot read": "schema_version = ",
    }
    for index, (message, text) in enumerate(cases.items()):
        bad = tmp_path / f"bad{index}.toml"
        bad.write_text(text)
        with pytest.raises(CatalogError, match=message):
            load_catalog(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")


def test_catalog_offers_feed_a_policy(catalog: Catalog) -> None:
    offers = catalog.offers("llama-3.3-70b")
    states = {name: ProviderState(provider=name) for name in ("groq", "together")}
    job = JobFacts(model="llama-3.3-70b", request_count=100, est_input_tokens=1_000_000, est_output_tokens=1_000_000)
    best = CheapestPolicy().rank(job, offers, states)[0]
    assert (best.offer.provider, best.offer.mode) == ("groq", "batch")
    assert best.estimated_cost_usd == pytest.approx(0.4425 + 0.5925)


def test_flex_and_priority_prices_become_offers_of_their_tier(tmp_path: Path) -> None:
    tiered = MINIMAL.replace('modes = ["batch"]', 'modes = ["batch", "sync"]').replace(
        'source = "example.com/pricing"',
        "flex_input_per_mtok = 0.5\nflex_output_per_mtok = 1.0\npriority_input_per_mtok = 2.0\n"
        'priority_output_per_mtok = 4.0\nsource = "example.com/pricing"',
    )
    path = tmp_path / "tiers.toml"
    path.write_text(tiered)
    offers = load_catalog(path).offers("m")
    assert [(o.run_mode, o.input_per_mtok, o.output_per_mtok) for o in offers] == [
        ("batch", 1.0, 2.0), ("sync", 1.0, 2.0), ("flex", 0.5, 1.0), ("priority", 2.0, 4.0),
    ]  # fmt: skip
    assert [o.label for o in offers[2:]] == ["p/pm (sync, flex)", "p/pm (sync, priority)"]
    for text, message in (
        (tiered.replace('modes = ["batch", "sync"]', 'modes = ["batch"]'), "modes must include 'sync'"),
        (tiered.replace("priority_output_per_mtok = 4.0\n", ""), "give both priority_input_per_mtok"),
    ):
        path.write_text(text)
        with pytest.raises(CatalogError, match=message):
            load_catalog(path)
