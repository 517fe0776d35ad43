"""Alerts & budgets: billing and anomaly alerts newest first with acknowledge; budgets, editable."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import charts, ui
from dashboard import format as fmt
from dashboard.client import GatewayError

KIND_ICON = {
    "budget_threshold": ":material/savings:",
    "anomaly": ":material/trending_up:",
    "canary": ":material/front_hand:",
    "budget_stop": ":material/block:",
}


def parse_thresholds(text: str) -> list[float]:
    """``"50, 80, 100"`` (percent) as fractions ``[0.5, 0.8, 1.0]``; raises ValueError on bad input."""
    values = [float(part) for part in text.replace("%", "").replace(";", ",").split(",") if part.strip()]
    if any(not 0 < v <= 1000 for v in values):
        raise ValueError("thresholds must be percentages above 0")
    return sorted({round(v / 100, 6) for v in values})


def alert_card(alert: dict[str, Any]) -> None:
    """One alert: what, when, figures, and an acknowledge button while open."""
    kind = str(alert.get("kind") or "alert")
    with st.container(border=True):
        left, right = st.columns([5, 1])
        icon = KIND_ICON.get(kind, ":material/notifications:")
        left.markdown(f"{icon} **{kind.replace('_', ' ')}** · {fmt.when(alert.get('created_at'))} UTC")
        left.write(alert.get("message") or fmt.MISSING)
        details = []
        if alert.get("spent_usd") is not None:
            details.append(f"spent {fmt.money(alert['spent_usd'])} of {fmt.money(alert.get('limit_usd'), 2)}")
        if alert.get("threshold") is not None and kind == "budget_threshold":
            details.append(f"threshold {fmt.percent(alert['threshold'])}")
        if alert.get("batch_id"):
            details.append(f"batch {alert['batch_id']}")
        webhook = alert.get("webhook")
        if isinstance(webhook, dict):
            details.append(f"webhook {webhook.get('state')} after {webhook.get('attempts', 0)} attempt(s)")
        if details:
            left.caption(" · ".join(details))
        if alert.get("acknowledged_at"):
            right.caption(f"acknowledged {fmt.when(alert['acknowledged_at'])}")
        elif right.button("Acknowledge", key=f"ack_{alert.get('id')}") and (
            ui.act(lambda: ui.client().ack_alert(alert["id"]), "Alert acknowledged") is not None
        ):
            st.rerun()


def alerts_section() -> None:
    """Open alerts first; acknowledged ones on request."""
    show_all = st.toggle("Show acknowledged alerts too", key="alerts_all")
    alerts = ui.fetch(lambda: ui.client().alerts(acknowledged=None if show_all else False), "alerts")
    if alerts is None:
        return
    if not alerts:
        st.success("No open alerts." if not show_all else "No alerts yet.")
        return
    st.caption(f"{len(alerts)} alert(s), newest first")
    for alert in alerts:
        alert_card(alert)


def budget_form(budgets: list[dict[str, Any]]) -> None:
    """Create or change the budget of a scope and period."""
    with st.form("budget_form", clear_on_submit=False):
        st.markdown("**Set a budget** (an existing scope and period is replaced)")
        cols = st.columns([3, 1, 1, 2, 1])
        scope = cols[0].text_input("Scope", value="global", help="'global' or 'team:<team name>'", key="budget_scope")
        period = cols[1].selectbox("Period", ["day", "month"], key="budget_period")
        limit = cols[2].number_input("Limit (USD)", min_value=0.01, value=100.0, step=10.0, key="budget_limit")
        thresholds = cols[3].text_input("Alert at (% of limit)", value="50, 80, 100", key="budget_thresholds")
        hard = cols[4].checkbox("Hard stop", key="budget_hard", help="Refuse new batches and pause queued ones")
        if st.form_submit_button("Save budget"):
            try:
                fractions = parse_thresholds(thresholds)
            except ValueError:
                st.error("Thresholds must be numbers such as '50, 80, 100' (percent of the limit).")
                return
            body = {"scope": scope.strip(), "period": period, "limit_usd": limit, "hard": hard, "thresholds": fractions}
            if ui.act(lambda: ui.client().put_budget(body), f"Budget {scope} / {period} saved") is not None:
                st.rerun()


def budgets_section() -> None:
    """Budgets with their use and thresholds, a form to set one, and removal."""
    st.header("Budgets")
    budgets = ui.fetch(lambda: ui.client().budgets(), "budgets")
    if budgets is None:
        return
    if budgets:
        charts.show_budgets(budgets)
        with st.expander("Remove a budget"):
            labels = {charts.budget_label(b): b["id"] for b in budgets}
            chosen = st.selectbox("Budget", list(labels), key="budget_remove_pick")
            if st.button("Remove", key="budget_remove") and chosen:
                try:
                    ui.client().delete_budget(labels[chosen])
                except GatewayError as error:
                    ui.show_error(error)
                else:
                    st.rerun()
    else:
        st.info("No budgets set yet.")
    budget_form(budgets)


st.title("Alerts & budgets")
alerts_section()
budgets_section()
