"""Load and validate the model catalog (``models.toml``) and look offers up by name.

A name is either a logical model (``gpt-4o-mini``, or one of its aliases) or a *pin*,
``provider/model``, where ``model`` is the provider's own id or a logical name: a pin keeps only
that provider's offers (resolution: :mod:`gateway.catalog.names`). Each catalog offer becomes one
:class:`router_policies.base.Offer` per mode it lists.

Overrides replace fields of shipped offers without editing the file; they are keyed by the pin of
the offer (``provider/provider_model``)::

    load_catalog(overrides={"openai/gpt-4o-mini": {"batch_input_per_mtok": 0.07, "as_of": "2026-12-01"}})
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.catalog.names import NameIndex, Resolved
from router_policies.base import Offer, PriceWindow, Tier

_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"


class CatalogError(ValueError):
    """The catalog file or its overrides are invalid; ``pin`` names the override at fault, if one is."""

    def __init__(self, message: str, pin: str | None = None) -> None:
        super().__init__(message)
        self.pin = pin


class PriceWindowEntry(BaseModel):
    """A daily UTC range with its own price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_utc: str = Field(pattern=_HHMM)
    end_utc: str = Field(pattern=_HHMM)
    input_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    output_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    label: str = ""

    @model_validator(mode="after")
    def _not_empty(self) -> PriceWindowEntry:
        if self.start_utc == self.end_utc:
            raise ValueError("a price window's start and end must differ")
        return self


class OfferEntry(BaseModel):
    """One provider's offer of a logical model, with where its prices come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(pattern=_NAME)
    provider_model: str = Field(min_length=1)
    modes: tuple[Literal["batch", "sync"], ...] = Field(min_length=1)
    input_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    output_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    batch_input_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    batch_output_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    cached_input_per_mtok: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Input read from a prompt cache (synchronous rate)."
    )
    cache_write_per_mtok: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Input written to a prompt cache (synchronous rate)."
    )
    batch_cached_input_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    batch_cache_write_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    flex_input_per_mtok: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Synchronous requests at the flex service tier."
    )
    flex_output_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    priority_input_per_mtok: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Synchronous requests at the priority service tier."
    )
    priority_output_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    price_windows: tuple[PriceWindowEntry, ...] = ()
    source: str = Field(min_length=1, description="Where the prices were read.")
    as_of: date = Field(description="When the prices were last seen at the source.")
    note: str | None = None

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, modes: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(modes)) != len(modes):
            raise ValueError("modes lists a mode twice")
        return modes

    @model_validator(mode="after")
    def _batch_rates_together(self) -> OfferEntry:
        for prefix in ("batch", "flex", "priority"):
            if (getattr(self, f"{prefix}_input_per_mtok") is None) != (
                getattr(self, f"{prefix}_output_per_mtok") is None
            ):
                raise ValueError(f"give both {prefix}_input_per_mtok and {prefix}_output_per_mtok, or neither")
        if self.tier_rates() and "sync" not in self.modes:
            raise ValueError("flex and priority prices are synchronous service tiers: modes must include 'sync'")
        return self

    def tier_rates(self) -> dict[Tier, tuple[float, float]]:
        """USD per MTok (input, output) of each synchronous service tier this offer prices besides standard."""
        rates: dict[Tier, tuple[float, float]] = {}
        for tier in ("flex", "priority"):
            given = getattr(self, f"{tier}_input_per_mtok"), getattr(self, f"{tier}_output_per_mtok")
            if given[0] is not None and given[1] is not None:
                rates[tier] = (given[0], given[1])
        return rates

    @property
    def pin(self) -> str:
        """``provider/provider_model``."""
        return f"{self.provider}/{self.provider_model}"

    def to_offers(self, model: str) -> list[Offer]:
        """One policy offer per mode, then one per priced synchronous service tier."""
        windows = tuple(
            PriceWindow(w.start_utc, w.end_utc, w.input_per_mtok, w.output_per_mtok, w.label)
            for w in self.price_windows
        )
        tiers = [
            Offer(
                provider=self.provider,
                model=model,
                provider_model=self.provider_model,
                input_per_mtok=rates[0],
                output_per_mtok=rates[1],
                mode="sync",
                context_window=self.context_window,
                max_output_tokens=self.max_output_tokens,
                tier=tier,
            )
            for tier, rates in self.tier_rates().items()
        ]
        return [
            Offer(
                provider=self.provider,
                model=model,
                provider_model=self.provider_model,
                input_per_mtok=self.input_per_mtok,
                output_per_mtok=self.output_per_mtok,
                batch_input_per_mtok=self.batch_input_per_mtok,
                batch_output_per_mtok=self.batch_output_per_mtok,
                mode=mode,
                context_window=self.context_window,
                max_output_tokens=self.max_output_tokens,
                price_windows=windows,
            )
            for mode in self.modes
        ] + tiers


class ModelEntry(BaseModel):
    """A logical model and the offers that serve it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    aliases: tuple[str, ...] = ()
    default_output_tokens: int | None = Field(
        None, ge=1, description="Output tokens a request is expected to write when a team has no history of it."
    )
    offers: tuple[OfferEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_offers(self) -> ModelEntry:
        pins = [offer.pin for offer in self.offers]
        if len(set(pins)) != len(pins):
            raise ValueError("two offers have the same provider and provider_model")
        return self


class CatalogFile(BaseModel):
    """The whole TOML document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    models: dict[str, ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> CatalogFile:
        seen: dict[str, str] = {}
        for name, entry in self.models.items():
            for alias in (name, *entry.aliases):
                if "/" in alias or not alias.strip():
                    raise ValueError(f"model name or alias {alias!r} must be non-empty and contain no '/'")
                if alias in seen:
                    raise ValueError(f"name {alias!r} is used by both {seen[alias]!r} and {name!r}")
                seen[alias] = name
        return self


class Catalog:
    """A validated catalog with lookups by logical name, alias or pin."""

    def __init__(self, data: CatalogFile) -> None:
        self.data = data
        aliases = {alias: name for name, entry in data.models.items() for alias in (name, *entry.aliases)}
        offers = {
            name: [o for entry in model.offers for o in entry.to_offers(name)] for name, model in data.models.items()
        }
        pins = [offer.pin for _, offer in self.entries()]
        self._index = NameIndex(aliases, offers, lambda o: (o.provider, o.provider_model), pins)

    def names(self) -> list[str]:
        """Logical model names, sorted."""
        return sorted(self.data.models)

    def entry(self, name: str) -> ModelEntry:
        """The catalog entry of a logical name or alias."""
        return self.data.models[self.resolve(name).model]

    def entries(self) -> list[tuple[str, OfferEntry]]:
        """Every (logical model, offer entry) pair, in file order."""
        return [(name, offer) for name, entry in self.data.models.items() for offer in entry.offers]

    def all_offers(self) -> list[Offer]:
        """Every policy offer of every model."""
        return [offer for name, entry in self.entries() for offer in entry.to_offers(name)]

    def resolve(self, name: str) -> Resolved[Offer]:
        """The logical model and offers behind ``name``; raises :class:`~gateway.errors.UnknownModel`."""
        return self._index.resolve(name)

    def offers(self, name: str) -> tuple[Offer, ...]:
        """The policy offers behind ``name``."""
        return self.resolve(name).offers

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        """Known names and pins that look like ``name``, best first."""
        return self._index.close_matches(name, n)


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> None:
    offers_by_pin: dict[str, list[dict[str, Any]]] = {}
    for entry in raw.get("models", {}).values():
        for offer in entry.get("offers", []):
            offers_by_pin.setdefault(f"{offer.get('provider')}/{offer.get('provider_model')}", []).append(offer)
    for pin, fields in overrides.items():
        if pin not in offers_by_pin:
            suggestions = difflib.get_close_matches(pin, list(offers_by_pin), n=3)
            hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
            raise CatalogError(f"override for {pin!r} matches no offer in the catalog{hint}", pin)
        for key in ("provider", "provider_model"):
            if key in fields:
                raise CatalogError(f"override for {pin!r} cannot change {key}", pin)
        for key in fields:
            if key not in OfferEntry.model_fields:
                close = difflib.get_close_matches(key, list(OfferEntry.model_fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CatalogError(f"override for {pin!r} has an unknown field {key!r}{hint}", pin)
        for offer in offers_by_pin[pin]:
            offer.update(fields)


def load_catalog(path: str | Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Catalog:
    """Read and validate a catalog (default: the shipped ``models.toml``), applying ``overrides``.

    Raises :class:`CatalogError` naming every problem found.
    """
    try:
        if path is None:
            text = resources.files("gateway.catalog").joinpath("models.toml").read_text(encoding="utf-8")
            where = "the shipped catalog"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read the model catalog: {exc}") from exc
    if overrides:
        _apply_overrides(raw, overrides)
    try:
        return Catalog(CatalogFile.model_validate(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise CatalogError(f"invalid model catalog ({where}): {problems}") from exc
