"""Resolving a client's model name, the one path the catalog and the routable offers share.

A name is a logical model, one of its aliases, or a *pin* ``provider/model`` where ``model`` is the
provider's own id, the logical name or an alias: a pin keeps only that provider's offers. An unknown
name raises :class:`~gateway.errors.UnknownModel` with the closest known names and pins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.config_errors import close_matches
from gateway.errors import UnknownModel

OfferT = TypeVar("OfferT")


@dataclass(frozen=True)
class Resolved(Generic[OfferT]):
    """What a requested name stands for."""

    requested: str
    model: str
    """The logical model."""
    offers: tuple[OfferT, ...]
    pinned_provider: str | None = None


class NameIndex(Generic[OfferT]):
    """Names and offers of logical models, with lookups by name, alias or pin."""

    def __init__(
        self,
        aliases: Mapping[str, str],
        offers: Mapping[str, Sequence[OfferT]],
        pin_of: Callable[[OfferT], tuple[str, str]],
        pins: Sequence[str],
    ) -> None:
        """``aliases``: every accepted name (logical ones too) to its logical model; ``offers``: a logical model's
        offers in order; ``pin_of``: an offer's (provider, provider's model id); ``pins``: names suggested besides
        the aliases when a name is unknown."""
        self._aliases = dict(aliases)
        self._offers = {model: tuple(group) for model, group in offers.items()}
        self._pin_of = pin_of
        self._pins = list(pins)
        self._names: dict[str, set[str]] = {}
        for alias, model in self._aliases.items():
            self._names.setdefault(model, {model}).add(alias)

    def resolve(self, name: str) -> Resolved[OfferT]:
        """The logical model and offers behind ``name``; raises :class:`~gateway.errors.UnknownModel`."""
        key = name.strip()
        if key in self._aliases:
            model = self._aliases[key]
            return Resolved(name, model, self._offers.get(model, ()))
        provider, sep, rest = key.partition("/")
        if sep:
            for model, group in self._offers.items():
                names = self._names.get(model, {model})
                pinned = tuple(
                    offer
                    for offer in group
                    if self._pin_of(offer)[0] == provider and (rest == self._pin_of(offer)[1] or rest in names)
                )
                if pinned:
                    return Resolved(name, model, pinned, pinned_provider=provider)
        raise UnknownModel(name, self.close_matches(key))

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        """Known names and pins that look like ``name``, best first."""
        return close_matches(name.strip(), [*self._aliases, *self._pins], n=n)
