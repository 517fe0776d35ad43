"""The offers the gateway can route to: configured providers joined with the priced model catalog.

A configured provider serves the gateway model names in its ``models`` table. Each becomes one
policy :class:`~router_policies.base.Offer`: the provider's mode follows its adapter kind (a provider
batch, or synchronous fan-out for the kinds that execute locally), and its prices come from the catalog
offer of the same logical model sold by ``catalog_provider`` (default: the provider's own name). A
synchronous provider whose catalog offer prices the ``flex`` or ``priority`` service tier gets one more
offer per tier its kind can ask for (``service_tiers`` of the adapter), at that tier's prices. A provider
that serves a model the catalog does not price is still routable, at a price of zero, and is reported
as unpriced (it never wins on price by accident of a missing entry: see :meth:`OfferBook.unpriced`).

Clients name a model by logical name or catalog alias (``llama-3.3-70b``), or pin a provider with
``provider/model`` (``groq-sim/llama-3.3-70b``), where ``model`` is a logical name, an alias, or the
provider's own model id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from gateway.catalog.loader import Catalog, OfferEntry
from gateway.catalog.names import NameIndex, Resolved
from gateway.errors import UnknownModel
from gateway.providers.registry import ProviderRegistry
from router_policies.base import Offer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PricedOffer:
    """A routable offer and where its price comes from."""

    offer: Offer
    source: OfferEntry | None
    """The catalog entry that priced it, or None when the catalog has no price."""

    @property
    def list_rates(self) -> tuple[float, float]:
        """Synchronous list prices at the standard tier (USD per MTok in, out): the base for savings, and what
        a request asked at another tier costs when the provider serves it at the standard one."""
        if self.offer.tier != "standard" and self.source is not None:
            return self.source.input_per_mtok, self.source.output_per_mtok
        return self.offer.input_per_mtok, self.offer.output_per_mtok

    @property
    def paid_rates(self) -> tuple[float, float]:
        """Prices this offer is charged at outside price windows (batch rate for provider batches)."""
        return self.offer.base_rates(self.offer.mode == "batch")


ResolvedModel = Resolved[PricedOffer]
"""What a client's model name stands for among the routable offers."""


@dataclass
class OfferBook:
    """Offers by logical model, built once per process from the catalog and the providers."""

    catalog: Catalog
    providers: ProviderRegistry
    _offers: dict[str, list[PricedOffer]] = field(default_factory=dict, init=False)
    _aliases: dict[str, str] = field(default_factory=dict, init=False)
    _index: NameIndex[PricedOffer] = field(init=False)

    def __post_init__(self) -> None:
        for adapter in self.providers:
            mode = "sync" if adapter.executes_locally else "batch"
            seller = adapter.config.catalog_provider or adapter.name
            for served, provider_model in adapter.config.models.items():
                logical = self._logical(served)
                self._aliases[served] = logical
                entry = self._catalog_entry(logical, seller, mode)
                offer = _offer(adapter.name, logical, provider_model, mode, entry)
                self._offers.setdefault(logical, []).append(PricedOffer(offer, entry))
                for tier, (rate_in, rate_out) in entry.tier_rates().items() if entry and mode == "sync" else ():
                    if tier not in adapter.service_tiers:
                        continue  # priced, but this kind cannot ask its provider for it (Anthropic has no flex)
                    # A tier's prices are flat: the standard offer's off-peak windows are not its own.
                    tiered = replace(
                        offer, input_per_mtok=rate_in, output_per_mtok=rate_out, price_windows=(), tier=tier
                    )
                    self._offers[logical].append(PricedOffer(tiered, entry))
        for name in self.catalog.names():
            for alias in (name, *self.catalog.data.models[name].aliases):
                if name in self._offers:
                    self._aliases.setdefault(alias, name)
        pins = [f"{o.offer.provider}/{o.offer.model}" for o in self.all_offers()]
        self._index = NameIndex(self._aliases, self._offers, lambda o: (o.offer.provider, o.offer.provider_model), pins)
        if unpriced := self.unpriced():
            log.warning("no catalog price for %s: routed at a price of 0", ", ".join(unpriced))

    def _logical(self, name: str) -> str:
        try:
            return self.catalog.resolve(name).model
        except LookupError:
            return name

    def _catalog_entry(self, logical: str, seller: str, mode: str) -> OfferEntry | None:
        if logical not in self.catalog.data.models:
            return None
        for entry in self.catalog.data.models[logical].offers:
            if entry.provider == seller and mode in entry.modes:
                return entry
        return None

    def models(self) -> list[str]:
        """Logical models some provider serves, sorted."""
        return sorted(self._offers)

    def offers(self, model: str) -> list[PricedOffer]:
        """Every offer of a logical model."""
        return list(self._offers.get(model, []))

    def all_offers(self) -> list[PricedOffer]:
        """Every offer of every model."""
        return [offer for offers in self._offers.values() for offer in offers]

    def sync_baseline(self, model: str, input_tokens: int, output_tokens: int) -> tuple[float, float]:
        """Synchronous list rates (USD per MTok in, out) of the cheapest priced offer of a logical model
        for these tokens: what the work would cost without batching, the base of every savings figure.

        Whoever serves the work, its savings are measured against this one baseline, so a failover to a
        pricier provider shows as less (or negative) savings. (0, 0) when no offer of the model is priced.
        """
        priced = [o for o in self._offers.get(model, []) if o.source is not None]
        if not priced:
            return 0.0, 0.0
        best = min(priced, key=lambda o: o.list_rates[0] * input_tokens + o.list_rates[1] * output_tokens)
        return best.list_rates

    def standard_rates(self, provider: str, provider_model: str) -> tuple[float, float] | None:
        """The standard-tier synchronous rates of a provider's model, for requests a provider served at the
        standard tier although another was asked for; None if no synchronous offer of it is priced."""
        for priced in self.all_offers():
            offer = priced.offer
            same = (offer.provider, offer.provider_model, offer.mode) == (provider, provider_model, "sync")
            if same and priced.source is not None:
                return priced.list_rates
        return None

    def unpriced(self) -> list[str]:
        """``provider/model`` of offers the catalog does not price."""
        return sorted(f"{o.offer.provider}/{o.offer.model}" for o in self.all_offers() if o.source is None)

    def resolve(self, name: str) -> ResolvedModel:
        """The logical model and offers behind a client's model name; raises :class:`UnknownModel`."""
        return self._index.resolve(name)

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        """Served names and pins that look like ``name``, best first."""
        return self._index.close_matches(name, n)


def _offer(provider: str, logical: str, provider_model: str, mode: str, entry: OfferEntry | None) -> Offer:
    if entry is None:
        return Offer(provider, logical, provider_model, 0.0, 0.0, mode=mode)  # type: ignore[arg-type]
    base = entry.to_offers(logical)[0]
    return Offer(
        provider=provider,
        model=logical,
        provider_model=provider_model,
        input_per_mtok=base.input_per_mtok,
        output_per_mtok=base.output_per_mtok,
        batch_input_per_mtok=base.batch_input_per_mtok,
        batch_output_per_mtok=base.batch_output_per_mtok,
        mode=mode,  # type: ignore[arg-type]
        context_window=base.context_window,
        max_output_tokens=base.max_output_tokens,
        price_windows=base.price_windows,
    )


__all__ = ["OfferBook", "PricedOffer", "ResolvedModel", "UnknownModel"]
