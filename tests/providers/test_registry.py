"""Building adapters from configuration: kinds, adapter options, model lookup."""

from __future__ import annotations

import httpx
import pytest

from gateway.providers.config import ProviderConfig
from gateway.providers.gemini_batch import GeminiBatchAdapter
from gateway.providers.openai_sync import OpenAISyncAdapter
from gateway.providers.registry import ProviderRegistry, UnknownProviderOption, build_adapter


async def test_options_reach_the_adapter() -> None:
    async with httpx.AsyncClient() as http:
        config = ProviderConfig(name="g", kind="gemini", base_url="http://g", options={"inline_max_bytes": 1234})
        adapter = build_adapter(config, http)
    assert isinstance(adapter, GeminiBatchAdapter) and adapter.inline_max_bytes == 1234


async def test_unknown_option_names_the_valid_ones() -> None:
    async with httpx.AsyncClient() as http:
        config = ProviderConfig(name="g", kind="gemini", base_url="http://g", options={"inline_max": 1})
        with pytest.raises(UnknownProviderOption, match="inline_max_bytes"):
            build_adapter(config, http)


async def test_sync_kind_and_model_lookup() -> None:
    async with httpx.AsyncClient() as http:
        registry = ProviderRegistry.from_config(
            {
                "deepseek": ProviderConfig(kind="openai_sync", base_url="http://d/v1", models={"ds": "deepseek-chat"}),
                "off": ProviderConfig(kind="openai", base_url="http://o/v1", models=["gpt-4o-mini"], enabled=False),
            },
            http,
        )
    adapter = registry.get("deepseek")
    assert isinstance(adapter, OpenAISyncAdapter) and adapter.executes_locally
    assert adapter.config.models == {"ds": "deepseek-chat"}
    assert registry.names() == ["deepseek"], "a disabled provider is not registered"
