"""Spend: cost over time by provider, model or team; savings against synchronous prices; budget use."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, ui
from dashboard import format as fmt

PERIODS = {"last 24 hours": (86400, "hour"), "last 7 days": (7 * 86400, "day"), "last 30 days": (30 * 86400, "day")}
SUMMED = ("cost_usd", "list_cost_usd", "savings_usd", "requests", "input_tokens", "output_tokens")


def totals_of(answer: dict[str, Any]) -> dict[str, float]:
    """The answer's totals, or the sums of its rows when it has none."""
    rows = answer.get("data") or []
    given = answer.get("totals") or {}
    return {name: float(given.get(name, sum(float(r.get(name) or 0) for r in rows))) for name in SUMMED}


def by_key(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per provider, model or team over the whole period, most expensive first."""
    frame = pd.DataFrame(rows)
    for name in SUMMED:
        if name not in frame:
            frame[name] = 0.0
    grouped = frame.groupby("key", as_index=False)[list(SUMMED)].sum().sort_values("cost_usd", ascending=False)
    return pd.DataFrame(
        {
            "key": grouped["key"],
            "cost": grouped["cost_usd"].map(fmt.money),
            "at list prices": grouped["list_cost_usd"].map(fmt.money),
            "saved": grouped["savings_usd"].map(fmt.money),
            "requests": grouped["requests"].astype(int),
            "input tokens": grouped["input_tokens"].astype(int),
            "output tokens": grouped["output_tokens"].astype(int),
        }
    )


st.title("Spend")
controls = st.columns([3, 2])
group = (
    controls[0].segmented_control("Group by", ["provider", "model", "team"], default="provider", key="spend_group")
    or "provider"
)
period = controls[1].selectbox("Period", list(PERIODS), key="spend_period")
window, bucket = PERIODS[period]
since = int(time.time()) - window

answer = ui.fetch(lambda: ui.client().spend(group_by=group, bucket=bucket, since=since), "spend")
if answer is not None:
    rows = answer.get("data") or []
    totals = totals_of(answer)
    cols = st.columns(4)
    cols[0].metric("Spent", fmt.money(totals["cost_usd"]))
    cols[1].metric("At synchronous list prices", fmt.money(totals["list_cost_usd"]))
    share = totals["savings_usd"] / totals["list_cost_usd"] if totals["list_cost_usd"] else None
    cols[2].metric("Saved", fmt.money(totals["savings_usd"]), delta=fmt.percent(share) if share is not None else None)
    cols[3].metric("Requests", f"{int(totals['requests']):,}")
    if not rows:
        st.info(f"No spend recorded in the {period}.")
    else:
        cost_tab, savings_tab = st.tabs(["Cost", "Savings"])
        cost_tab.altair_chart(charts.spend_chart(rows, "cost_usd", group), width="stretch")
        savings_tab.altair_chart(charts.spend_chart(rows, "savings_usd", group), width="stretch")
        st.subheader(f"By {group}")
        st.dataframe(by_key(rows), hide_index=True, key="spend_by_key")

st.subheader("Budget use")
budgets = ui.fetch(lambda: ui.client().budgets(), "budgets")
if budgets is not None:
    if budgets:
        charts.show_budgets(budgets)
    else:
        st.info("No budgets set. Add one on the Alerts & budgets page.")
