"""Builders for hand-made offers, provider states and jobs shared by the policy tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router_policies.base import Hints, JobFacts, Mode, Offer, PriceWindow, ProviderState

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def offer(
    provider: str,
    *,
    sync: tuple[float, float] = (1.0, 2.0),
    batch: tuple[float, float] | None = (0.5, 1.0),
    mode: Mode = "batch",
    model: str = "m",
    provider_model: str | None = None,
    windows: tuple[PriceWindow, ...] = (),
) -> Offer:
    """An offer with prices in USD per MTok."""
    return Offer(
        provider=provider,
        model=model,
        provider_model=provider_model or f"{provider}-m",
        input_per_mtok=sync[0],
        output_per_mtok=sync[1],
        batch_input_per_mtok=None if batch is None else batch[0],
        batch_output_per_mtok=None if batch is None else batch[1],
        mode=mode,
        price_windows=windows,
    )


def states(*providers: str, **overrides: dict[str, Any]) -> dict[str, ProviderState]:
    """Healthy states for ``providers``; ``overrides`` maps a provider to fields to change."""
    names = list(dict.fromkeys([*providers, *overrides]))
    return {name: ProviderState(provider=name, **overrides.get(name, {})) for name in names}


def job(hints: Hints | None = None, **fields: Any) -> JobFacts:
    """1,000 requests, 1 MTok in and 0.5 MTok out, at :data:`NOW`."""
    values: dict[str, Any] = {
        "model": "m",
        "request_count": 1000,
        "est_input_tokens": 1_000_000,
        "est_output_tokens": 500_000,
        "now": NOW,
        "hints": hints or Hints(),
    }
    values.update(fields)
    return JobFacts(**values)
