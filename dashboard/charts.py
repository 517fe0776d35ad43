"""Charts and tables shared by pages: spend over time and budget use with thresholds marked."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import format as fmt


def thresholds_of(budget: dict[str, Any]) -> list[float]:
    """A budget's alert thresholds as fractions of its limit (accepts 0.8 or 80)."""
    values = [float(t) for t in budget.get("thresholds") or [] if isinstance(t, int | float)]
    return [v / 100 if v > 1.5 else v for v in values]


def utilization_of(budget: dict[str, Any]) -> float:
    """Spent (plus reserved) over the limit, as a fraction."""
    for name in ("utilisation", "utilization"):
        if isinstance(budget.get(name), int | float):
            return float(budget[name])
    limit = budget.get("limit_usd") or 0
    return (float(budget.get("spent_usd") or 0) + float(budget.get("reserved_usd") or 0)) / limit if limit else 0.0


def budget_label(budget: dict[str, Any]) -> str:
    """``team:acme / month``."""
    return f"{budget.get('scope')} / {budget.get('period')}"


def budget_rows(budgets: list[dict[str, Any]]) -> pd.DataFrame:
    """A readable table of budgets: spent, reserved, limit, use and thresholds."""
    return pd.DataFrame(
        {
            "budget": budget_label(b),
            "spent": fmt.money(b.get("spent_usd")),
            "reserved": fmt.money(b.get("reserved_usd")),
            "left": fmt.money(b.get("remaining_usd")),
            "limit": fmt.money(b.get("limit_usd"), 2),
            "use": fmt.percent(utilization_of(b)),
            "thresholds": ", ".join(fmt.percent(t) for t in thresholds_of(b)) or fmt.MISSING,
            "hard": "hard stop" if b.get("hard") else "alert only",
            "next threshold": next((fmt.percent(t) for t in thresholds_of(b) if t > utilization_of(b)), "all passed"),
        }
        for b in budgets
    )


def budget_chart(budgets: list[dict[str, Any]]) -> alt.LayerChart | alt.FacetChart:
    """Horizontal bars of use per budget, with a tick at every threshold (red once passed)."""
    bars = pd.DataFrame(
        {"budget": budget_label(b), "use": min(utilization_of(b), 1.5), "label": fmt.percent(utilization_of(b))}
        for b in budgets
    )
    ticks = pd.DataFrame(
        {"budget": budget_label(b), "threshold": t, "state": "passed" if utilization_of(b) >= t else "not reached"}
        for b in budgets
        for t in thresholds_of(b)
    )
    scale = alt.Scale(domain=[0, 1.1], clamp=True)
    x = alt.X("use:Q", title="share of limit used", axis=alt.Axis(format="%"), scale=scale)
    base = alt.Chart(bars).encode(y=alt.Y("budget:N", title=None))
    layers: list[alt.Chart] = [
        base.mark_bar(color="#4c78a8", height=18).encode(x=x, tooltip=["budget", "label"]),
        base.mark_text(align="right", dx=-6, color="white", fontWeight="bold").encode(x=x, text="label:N"),
    ]
    if not ticks.empty:
        layers.append(
            alt.Chart(ticks)
            .mark_tick(thickness=3, size=26)
            .encode(
                x=alt.X("threshold:Q", scale=scale),
                y="budget:N",
                color=alt.Color(
                    "state:N",
                    scale=alt.Scale(domain=["not reached", "passed"], range=["#555555", "#d62728"]),
                    title="alert threshold",
                ),
                tooltip=[alt.Tooltip("threshold:Q", format=".0%"), "state:N"],
            )
        )
    return alt.layer(*layers).properties(height=alt.Step(40))


def show_budgets(budgets: list[dict[str, Any]]) -> None:
    """The budget chart and its table."""
    st.altair_chart(budget_chart(budgets), width="stretch")
    st.dataframe(budget_rows(budgets), hide_index=True, key="budgets_table")
    close = [b for b in budgets if any(utilization_of(b) >= t for t in thresholds_of(b))]
    for budget in close:
        st.warning(
            f"Budget {budget_label(budget)} is at {fmt.percent(utilization_of(budget))} of "
            f"{fmt.money(budget.get('limit_usd'), 2)}",
            icon=":material/warning:",
        )


def spend_chart(rows: list[dict[str, Any]], value: str, group: str) -> alt.Chart:
    """Stacked bars of ``value`` per time bucket, one colour per provider, model or team."""
    frame = pd.DataFrame(rows)
    # Buckets as ordered labels: one bar per hour or day even when only a few have spend.
    frame["bucket"] = pd.to_datetime(frame["bucket_start"], unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M")
    return (
        alt.Chart(frame)
        .mark_bar(size=28)
        .encode(
            x=alt.X("bucket:O", title="bucket start (UTC)", axis=alt.Axis(labelAngle=0)),
            y=alt.Y(f"sum({value}):Q", title=f"{value.replace('_usd', '').replace('_', ' ')} (USD)"),
            color=alt.Color("key:N", title=group),
            tooltip=["key:N", "bucket:O", alt.Tooltip(f"{value}:Q", format="$.6f"), "requests:Q"],
        )
        .properties(height=280)
    )
