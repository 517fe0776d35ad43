"""Advisor: what a job costs as a batch or fanned out synchronously, how long each takes, and which to choose;
and the batches held after their canary, waiting for an operator."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import ui

RECOMMENDATION_ICON = {"batch": ":material/inventory_2:", "fan-out": ":material/bolt:", "tiered": ":material/layers:"}


def offers_table(estimate: dict[str, Any]) -> pd.DataFrame:
    """One row per viable offer: batch and synchronous cost, savings, turnaround, fan-out time."""
    rows = []
    for row in estimate.get("data") or []:
        low, high = row.get("output_tokens_low"), row.get("output_tokens_high")
        rows.append(
            {
                "model": row.get("model"),
                "provider": row.get("provider"),
                "mode": row.get("mode"),
                "policy": "chosen" if row.get("rank") == 1 else (f"#{row['rank']}" if row.get("rank") else "ruled out"),
                "cost": fmt.money(row.get("cost_usd")),
                "range (p50-p90)": f"{fmt.money(row.get('cost_low_usd'))} - {fmt.money(row.get('cost_high_usd'))}",
                "synchronous": fmt.money(row.get("sync_cost_usd")),
                "saved": fmt.money(row.get("savings_usd")),
                "turnaround p50 / p90": (
                    f"{fmt.duration(row.get('turnaround_p50_s'))} / {fmt.duration(row.get('turnaround_p90_s'))}"
                ),
                "turnaround basis": row.get("turnaround_basis"),
                "fan-out takes": fmt.duration(row.get("fanout_s")),
                "fan-out at": row.get("fanout_basis"),
                "output tokens": f"{row.get('output_tokens'):,}" + (f" ({low:,}-{high:,})" if low != high else ""),
                "estimate basis": row.get("basis"),
            }
        )
    return pd.DataFrame(rows)


def show_estimate(estimate: dict[str, Any]) -> None:
    """The recommendation per model first, then the offers."""
    for advice in estimate.get("advice") or []:
        icon = RECOMMENDATION_ICON.get(advice.get("recommendation"), ":material/lightbulb:")
        flags = []
        if advice.get("small_job"):
            flags.append("small job")
        if not advice.get("meets_deadline"):
            flags.append("misses the deadline")
        title = f"{advice.get('model')}: **{str(advice.get('recommendation')).upper()}**"
        if flags:
            title += f" ({', '.join(flags)})"
        show = st.warning if flags else st.success
        show(f"{title}. {advice.get('reason')}", icon=icon)
    for problem in estimate.get("problems") or []:
        st.error(f"Cannot route: {problem}")
    low, high = estimate.get("chosen_cost_range_usd") or (None, None)
    st.metric("Estimated cost on the policy's choice", fmt.money(estimate.get("chosen_cost_usd")),
              help=f"p50-p90 range {fmt.money(low)} - {fmt.money(high)}")  # fmt: skip
    st.dataframe(offers_table(estimate), hide_index=True, key="advisor_offers")


def held_section() -> None:
    """Batches held after their canary, with a link to their page (release or cancel there)."""
    st.subheader("Held after their canary")
    held = ui.fetch(lambda: ui.client().held_canaries(), "held batches")
    if held is None:
        return
    if not held:
        st.success("No batch is waiting for an operator.")
        return
    for row in held:
        with st.container(border=True):
            st.markdown(
                f"**{row['id']}** · team {row.get('team') or fmt.MISSING} · projected "
                f"{fmt.money(row.get('canary_projected_usd'))} (estimated {fmt.money(row.get('estimated_cost_usd'))})"
            )
            st.caption(row.get("hold_detail") or "")
            st.page_link("views/job.py", label="Open: release or cancel", query_params={"batch": row["id"]})


st.title("Advisor")
st.caption(
    "Batch or fan out? Pick a job's input file (or paste any uploaded file id) and a deadline: the gateway prices "
    "it on every provider, estimates turnaround from observed batches and fan-out time from rate limits."
)
jobs = ui.fetch(lambda: ui.client().batches(limit=50), "jobs") or {}
choices = {f"{b['id']} ({b.get('team') or b.get('team_id')})": b for b in jobs.get("data") or []}
controls = st.columns([3, 2, 1, 1])
picked = controls[0].selectbox("Input file of a job", ["", *choices], key="advisor_job")
file_id = controls[1].text_input("or a file id", key="advisor_file")
deadline = controls[2].text_input("Deadline", placeholder="e.g. 4h", key="advisor_deadline")
policy = controls[3].text_input("Policy", placeholder="default", key="advisor_policy")
chosen = choices.get(picked) if picked else None
target = file_id.strip() or (chosen or {}).get("input_file_id")
if st.button("Estimate", key="advisor_go", disabled=not target, type="primary") and target:
    wanted: str = str(target)
    answer = ui.act(
        lambda: ui.client().estimate(wanted, deadline=deadline.strip() or None, policy=policy.strip() or None),
        "Estimated",
    )
    if answer is not None:
        st.session_state["advisor_answer"] = answer
if st.session_state.get("advisor_answer"):
    show_estimate(st.session_state["advisor_answer"])
held_section()
