"""Webhooks: teams' batch webhook endpoints with their deliveries, a form to register one (its signing secret is
shown once) and removal."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import ui

EVENT_TYPES = ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


def endpoints_section() -> None:
    """Each endpoint with its deliveries by state; its latest events on request."""
    endpoints = ui.fetch(lambda: ui.client().webhook_endpoints(), "webhook endpoints")
    if endpoints is None:
        return
    if not endpoints:
        st.info("No webhook endpoints yet: teams poll for their batches.")
        return
    details = [_detail(e["id"]) for e in endpoints]
    rows = [
        {
            "endpoint": e["id"],
            "team": e["team"],
            "url": e["url"],
            "events": ", ".join(t.removeprefix("batch.") for t in e["event_types"]),
            "delivered": (d or {}).get("deliveries", {}).get("delivered", 0),
            "pending": (d or {}).get("deliveries", {}).get("pending", 0),
            "gave up": (d or {}).get("deliveries", {}).get("gave_up", 0),
            "created": fmt.when(e["created_at"]),
        }
        for e, d in zip(endpoints, details, strict=True)
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    chosen = st.selectbox("Latest events of", [e["id"] for e in endpoints], key="webhook_events_of")
    detail = next((d for e, d in zip(endpoints, details, strict=True) if e["id"] == chosen), None)
    if detail is not None:
        events_table(detail.get("recent_events", []))
    with st.expander("Remove an endpoint"):
        doomed = st.selectbox("Endpoint", [e["id"] for e in endpoints], key="webhook_remove_pick")
        if st.button("Remove", key="webhook_remove") and doomed and ui.act(
            lambda: ui.client().delete_webhook_endpoint(doomed), f"Endpoint {doomed} removed"
        ) is not None:
            st.rerun()


def _detail(endpoint_id: str) -> dict[str, Any] | None:
    return ui.fetch(lambda: ui.client().webhook_endpoint(endpoint_id), "deliveries")


def events_table(events: list[dict[str, Any]]) -> None:
    """An endpoint's latest events: which batch, delivery state, attempts and the last answer."""
    if not events:
        st.caption("No events yet: one is posted when a batch of the team ends.")
        return
    rows = [
        {
            "event": e["type"],
            "batch": e["batch_id"],
            "state": e["state"],
            "attempts": e["attempts"],
            "last answer": f"HTTP {e['last_status']}" if e["last_status"] else (e["last_error"] or "-"),
            "next try": fmt.when(e["next_attempt_at"]) if e["next_attempt_at"] else "-",
        }
        for e in events
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def register_form() -> None:
    """Register an endpoint; the secret is shown this once, never again."""
    with st.form("webhook_form", clear_on_submit=True):
        st.markdown("**Register an endpoint**")
        cols = st.columns([2, 4, 4])
        team = cols[0].text_input("Team", key="webhook_team")
        url = cols[1].text_input("URL", placeholder="https://example.com/hooks", key="webhook_url")
        kinds = cols[2].multiselect("Events", EVENT_TYPES, default=EVENT_TYPES, key="webhook_events")
        if st.form_submit_button("Register"):
            body = {"team": team.strip(), "url": url.strip(), "event_types": kinds}
            created = ui.act(lambda: ui.client().add_webhook_endpoint(body), "Endpoint registered")
            if created is not None:
                st.session_state["webhook_secret"] = (created["id"], created["signing_secret"])
    shown = st.session_state.pop("webhook_secret", None)
    if shown is not None:
        st.success(f"Endpoint {shown[0]} registered. Its signing secret, shown this once:")
        st.code(shown[1], language=None)


st.title("Webhooks")
st.caption(
    "Each ended batch is posted to its team's endpoints as OpenAI's signed batch event "
    "(verify with the openai SDK's client.webhooks.unwrap)."
)
register_form()
endpoints_section()
