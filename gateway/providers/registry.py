"""Provider kinds and the registry of configured provider adapters.

Adding a provider kind is one line in :data:`ADAPTER_KINDS`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Iterator, Mapping

import httpx

from gateway.providers.anthropic_batch import AnthropicBatchAdapter
from gateway.providers.anthropic_sync import AnthropicSyncAdapter
from gateway.providers.base import ProviderAdapter
from gateway.providers.bedrock_batch import BedrockBatchAdapter
from gateway.providers.config import ProviderConfig
from gateway.providers.gemini_batch import GeminiBatchAdapter
from gateway.providers.gemini_sync import GeminiSyncAdapter
from gateway.providers.mistral_batch import MistralBatchAdapter
from gateway.providers.openai_batch import OpenAIBatchAdapter
from gateway.providers.openai_sync import OpenAISyncAdapter
from gateway.providers.openrouter_batch import OpenRouterBatchAdapter

ADAPTER_KINDS: dict[str, type[ProviderAdapter]] = {
    OpenAIBatchAdapter.kind: OpenAIBatchAdapter,
    OpenAISyncAdapter.kind: OpenAISyncAdapter,
    AnthropicBatchAdapter.kind: AnthropicBatchAdapter,
    GeminiBatchAdapter.kind: GeminiBatchAdapter,
    MistralBatchAdapter.kind: MistralBatchAdapter,
    BedrockBatchAdapter.kind: BedrockBatchAdapter,
    OpenRouterBatchAdapter.kind: OpenRouterBatchAdapter,
    GeminiSyncAdapter.kind: GeminiSyncAdapter,
    AnthropicSyncAdapter.kind: AnthropicSyncAdapter,
}
"""Adapter class by the ``kind`` a provider's configuration names."""


class UnknownProviderKind(ValueError):
    """A provider's configuration names a kind no adapter implements."""


class UnknownProvider(LookupError):
    """No enabled provider has this name."""


class UnknownProviderOption(ValueError):
    """A provider's ``options`` names a setting its adapter kind does not have."""


def adapter_options(adapter_class: type[ProviderAdapter]) -> dict[str, typing.Any]:
    """The settings a provider's ``options`` may give this adapter kind, with their types."""
    try:  # the adapters name these two only for type checkers
        hints = typing.get_type_hints(adapter_class, localns={"ProviderConfig": ProviderConfig, "httpx": httpx})
    except (NameError, TypeError):
        hints = {}
    return {
        f.name: hints.get(f.name, typing.Any)
        for f in dataclasses.fields(adapter_class)
        if f.init and not f.name.startswith("_") and f.name not in {"config", "http", "api_key"}
    }


def build_adapter(config: ProviderConfig, http: httpx.AsyncClient) -> ProviderAdapter:
    """The adapter for one provider, with its API key read from the environment."""
    adapter_class = ADAPTER_KINDS.get(config.kind)
    if adapter_class is None:
        known = ", ".join(sorted(ADAPTER_KINDS))
        raise UnknownProviderKind(
            f"provider {config.name!r} has kind {config.kind!r}, which is not one of the known kinds: {known}"
        )
    settable = set(adapter_options(adapter_class))
    unknown = sorted(set(config.options) - settable)
    if unknown:
        raise UnknownProviderOption(
            f"provider {config.name!r} ({config.kind}) has no option {', '.join(unknown)}; "
            f"options of this kind: {', '.join(sorted(settable)) or 'none'}"
        )
    return adapter_class(config=config, http=http, api_key=config.api_key(), **config.options)


class ProviderRegistry:
    """The adapters of every enabled configured provider, in configuration order."""

    def __init__(self, adapters: Iterable[ProviderAdapter] = ()) -> None:
        self._adapters: dict[str, ProviderAdapter] = {}
        for adapter in adapters:
            if adapter.name in self._adapters:
                raise ValueError(f"two providers are named {adapter.name!r}")
            self._adapters[adapter.name] = adapter

    @classmethod
    def from_config(
        cls, providers: Mapping[str, ProviderConfig] | Iterable[ProviderConfig], http: httpx.AsyncClient
    ) -> ProviderRegistry:
        """Build adapters for the enabled providers (a name-keyed mapping as in the settings, or a list)."""
        if isinstance(providers, Mapping):
            configs = [
                config if config.name else config.model_copy(update={"name": name})
                for name, config in providers.items()
            ]
        else:
            configs = list(providers)
        return cls(build_adapter(config, http) for config in configs if config.enabled)

    def get(self, name: str) -> ProviderAdapter:
        """The adapter of the provider called ``name``."""
        try:
            return self._adapters[name]
        except KeyError:
            known = ", ".join(self._adapters) or "none"
            raise UnknownProvider(f"no enabled provider is named {name!r}; known providers: {known}") from None

    def names(self) -> list[str]:
        """Names of the enabled providers, in configuration order."""
        return list(self._adapters)

    def models(self) -> list[str]:
        """Every gateway model name some enabled provider serves, sorted."""
        return sorted({model for adapter in self._adapters.values() for model in adapter.config.models})

    def __iter__(self) -> Iterator[ProviderAdapter]:
        return iter(self._adapters.values())

    def __len__(self) -> int:
        return len(self._adapters)

    def __contains__(self, name: object) -> bool:
        return name in self._adapters
