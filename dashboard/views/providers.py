"""Providers: health and circuit state, observed turnaround, in-flight shards against caps, catalog prices."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import ui


def per_mtok(value: Any) -> str:
    """A price in USD per million tokens."""
    return fmt.money(value, 3) if isinstance(value, int | float) else fmt.MISSING


def cap_of(provider: dict[str, Any]) -> Any:
    """The provider's cap on batches in flight."""
    return provider.get("max_batches_in_flight") or (provider.get("limits") or {}).get("max_batches_in_flight")


def overview(providers: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per provider: circuit, failures, in flight against the cap."""
    rows = []
    for p in providers:
        health = p.get("health") or {}
        in_flight, cap = p.get("in_flight"), cap_of(p)
        rows.append(
            {
                "provider": p.get("name"),
                "kind": p.get("kind"),
                "circuit": fmt.CIRCUIT_LABEL.get(str(health.get("circuit")), str(health.get("circuit") or fmt.MISSING)),
                "failures in a row": health.get("consecutive_failures", fmt.MISSING),
                "in flight": f"{in_flight if in_flight is not None else fmt.MISSING} / {cap or '∞'}",
                "last success": fmt.when(health.get("last_success_at")),
                "last failure": fmt.when(health.get("last_failure_at")),
                "last error": health.get("last_error") or "",
                "models": ", ".join(sorted(p.get("models") or {})),
            }
        )
    return pd.DataFrame(rows)


def turnaround(providers: list[dict[str, Any]]) -> pd.DataFrame:
    """Observed p50/p90 from submission to results, per provider model."""
    return pd.DataFrame(
        {
            "provider": p.get("name"),
            "model": model,
            "p50": fmt.duration(stats.get("p50_s")),
            "p90": fmt.duration(stats.get("p90_s")),
            "samples": stats.get("samples", 0),
        }
        for p in providers
        for model, stats in (p.get("turnaround") or {}).items()
    )


def offers(providers: list[dict[str, Any]]) -> pd.DataFrame:
    """Catalog prices of every offer, batch and synchronous, per million tokens."""
    return pd.DataFrame(
        {
            "provider": p.get("name"),
            "model": o.get("model"),
            "provider model": o.get("provider_model"),
            "mode": o.get("mode"),
            "input": per_mtok(o.get("input_per_mtok")),
            "output": per_mtok(o.get("output_per_mtok")),
            "batch input": per_mtok(o.get("batch_input_per_mtok")),
            "batch output": per_mtok(o.get("batch_output_per_mtok")),
            "source": o.get("source") or fmt.MISSING,
            "as of": o.get("as_of") or fmt.MISSING,
        }
        for p in providers
        for o in p.get("offers") or []
    )


st.title("Providers")
providers = ui.fetch(lambda: ui.client().providers(), "providers")
if providers is not None:
    if not providers:
        st.info("No providers configured: add [providers.NAME] tables to the file named by BATCHGW_CONFIG_FILE.")
    else:
        unhealthy = [p["name"] for p in providers if (p.get("health") or {}).get("circuit") in ("open", "half_open")]
        cols = st.columns(3)
        cols[0].metric("Providers", len(providers))
        cols[1].metric("Circuit open", len(unhealthy))
        cols[2].metric("Shards in flight", sum(int(p.get("in_flight") or 0) for p in providers))
        for name in unhealthy:
            st.error(f"{name}: circuit open, new work goes to other providers", icon=":material/error:")
        st.subheader("Health and capacity")
        st.dataframe(overview(providers), hide_index=True, key="providers_table")
        if all("health" not in p for p in providers):
            st.caption("Health, in-flight counts: not available on this gateway yet.")
        st.subheader("Observed turnaround")
        frame = turnaround(providers)
        if frame.empty:
            st.info("No turnaround measured yet (it appears once shards have finished).")
        else:
            st.dataframe(frame, hide_index=True, key="turnaround_table")
        st.subheader("Catalog prices (USD per million tokens)")
        prices = offers(providers)
        if prices.empty:
            st.info("Catalog prices: not available on this gateway yet.")
        else:
            st.dataframe(prices, hide_index=True, key="offers_table")
