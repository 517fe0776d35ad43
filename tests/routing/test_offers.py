"""The offer book: configured providers joined with the priced catalog; name resolution and pins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.catalog.loader import load_catalog
from gateway.errors import UnknownModel
from gateway.providers.config import ProviderConfig
from gateway.providers.registry import ProviderRegistry
from gateway.routing.offers import OfferBook

CATALOG = """
schema_version = 1

[models."llama-3.3-70b"]
aliases = ["llama-70b"]

[[models."llama-3.3-70b".offers]]
provider = "groq"
provider_model = "llama-3.3-70b-versatile"
modes = ["batch", "sync"]
input_per_mtok = 0.59
output_per_mtok = 0.79
batch_input_per_mtok = 0.30
batch_output_per_mtok = 0.40
source = "test"
as_of = 2026-12-01

[[models."llama-3.3-70b".offers]]
provider = "together"
provider_model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
modes = ["sync"]
input_per_mtok = 0.88
output_per_mtok = 0.88
source = "test"
as_of = 2026-12-01
"""


@pytest.fixture
def book(tmp_path: Path) -> Iterator[OfferBook]:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    configs = {
        "groq-east": ProviderConfig(
            kind="openai",
            base_url="http://127.0.0.1:1/v1",
            catalog_provider="groq",
            models={"llama-3.3-70b": "llama-3.3-70b-versatile"},
        ),
        "together": ProviderConfig(
            kind="openai_sync",
            base_url="http://127.0.0.1:2/v1",
            models={"llama-70b": "meta-llama/Llama-3.3-70B-Instruct-Turbo", "mystery-model": "mystery"},
        ),
    }
    registry = ProviderRegistry.from_config(configs, httpx.AsyncClient())
    yield OfferBook(load_catalog(path), registry)


def test_offers_take_their_prices_from_the_catalog_provider_and_their_mode_from_the_kind(book: OfferBook) -> None:
    resolved = book.resolve("llama-3.3-70b")
    assert resolved.model == "llama-3.3-70b" and resolved.pinned_provider is None
    by_provider = {o.offer.provider: o for o in resolved.offers}
    groq, together = by_provider["groq-east"], by_provider["together"]
    assert groq.offer.mode == "batch" and groq.paid_rates == (0.30, 0.40) and groq.list_rates == (0.59, 0.79)
    assert together.offer.mode == "sync" and together.paid_rates == (0.88, 0.88)
    assert together.offer.provider_model == "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    assert groq.source is not None and groq.source.source == "test"


def test_aliases_and_pins_resolve_to_the_logical_model(book: OfferBook) -> None:
    assert book.resolve("llama-70b").model == "llama-3.3-70b"
    pinned = book.resolve("groq-east/llama-70b")
    assert pinned.pinned_provider == "groq-east" and [o.offer.provider for o in pinned.offers] == ["groq-east"]
    by_id = book.resolve("together/meta-llama/Llama-3.3-70B-Instruct-Turbo")
    assert by_id.pinned_provider == "together" and by_id.model == "llama-3.3-70b"


def test_a_model_the_catalog_does_not_price_is_routable_and_reported(book: OfferBook) -> None:
    [offer] = book.resolve("mystery-model").offers
    assert offer.source is None and offer.paid_rates == (0.0, 0.0)
    assert book.unpriced() == ["together/mystery-model"]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("llama-3.3-7b", "llama-3.3-70b"), ("groq-east/llama-3.3-7b", "groq-east/llama-3.3-70b"), ("gpt-5", None)],
)
def test_unknown_names_suggest_close_matches(book: OfferBook, name: str, suggestion: str | None) -> None:
    with pytest.raises(UnknownModel) as raised:
        book.resolve(name)
    assert raised.value.name == name
    if suggestion:
        assert suggestion in raised.value.suggestions and f"did you mean '{suggestion}'" in str(raised.value)
    else:
        assert raised.value.suggestions == []


def test_a_pin_on_a_provider_that_does_not_serve_the_model_is_unknown(book: OfferBook) -> None:
    with pytest.raises(UnknownModel):
        book.resolve("groq-east/mystery-model")


TIERED_CATALOG = """
schema_version = 1

[models."tiered"]

[[models."tiered".offers]]
provider = "vendor"
provider_model = "tiered-1"
modes = ["batch", "sync"]
input_per_mtok = 1.0
output_per_mtok = 4.0
flex_input_per_mtok = 0.5
flex_output_per_mtok = 2.0
priority_input_per_mtok = 2.0
priority_output_per_mtok = 8.0
source = "test"
as_of = 2026-12-01
"""


@pytest.mark.parametrize(
    ("kind", "tiers"),
    [
        ("openai", {"batch"}),
        ("openai_sync", {"standard", "flex", "priority"}),
        ("gemini_sync", {"standard", "flex", "priority"}),
        ("anthropic_sync", {"standard", "priority"}),  # Anthropic has no flex tier to ask for
    ],
)
def test_a_priced_tier_is_an_offer_only_where_the_kind_can_ask_for_it(
    tmp_path: Path, kind: str, tiers: set[str]
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(TIERED_CATALOG, encoding="utf-8")
    config = ProviderConfig(
        kind=kind, base_url="http://127.0.0.1:1", catalog_provider="vendor", models={"tiered": "tiered-1"}
    )
    book = OfferBook(load_catalog(path), ProviderRegistry.from_config({"p": config}, httpx.AsyncClient()))
    offers = {o.offer.service: o.offer.base_rates(o.offer.mode == "batch") for o in book.resolve("tiered").offers}
    assert set(offers) == tiers
    assert offers.get("flex", (0.5, 2.0)) == (0.5, 2.0) and offers.get("priority", (2.0, 8.0)) == (2.0, 8.0)
