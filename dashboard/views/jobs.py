"""Jobs: every team's batches with progress, routing and cost; refreshes on its own while jobs run."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import ui

STATUSES = ["validating", "in_progress", "finalizing", "cancelling", "completed", "failed", "expired", "cancelled"]
PERIODS = {"last hour": 3600, "last 24 hours": 86400, "last 7 days": 7 * 86400, "all time": None}
REFRESH_S = 3


def matches(batch: dict[str, Any], team: str, provider: str, since: int | None) -> bool:
    """Client-side filter, for gateways that ignore the server-side filters."""
    if team and team not in (batch.get("team"), batch.get("team_id")):
        return False
    if provider and batch.get("providers") is not None and provider not in batch["providers"]:
        return False
    return not (since and (batch.get("created_at") or 0) < since)


def row(batch: dict[str, Any]) -> dict[str, Any]:
    """One table row of a batch; fields the gateway does not send show as a dash."""
    completed, failed, total = fmt.counts(batch)
    return {
        "job": f"job?batch={batch['id']}",
        "team": batch.get("team") or batch.get("team_id") or fmt.MISSING,
        "providers": fmt.joined(batch.get("providers")),
        "status": fmt.status_label(batch.get("status")),
        "waiting": fmt.waiting_label(batch),
        "progress": fmt.progress(batch),
        "succeeded": completed,
        "failed": failed,
        "total": total,
        "cost": fmt.money(batch.get("cost_usd")),
        "saved": fmt.money(batch.get("savings_usd")),
        "estimated": fmt.money(batch.get("estimated_cost_usd")),
        "turnaround": fmt.duration(batch.get("turnaround_s")),
        "model": fmt.joined(batch.get("models") or batch.get("model")),
        "policy": batch.get("policy") or fmt.MISSING,
        "created": fmt.when(batch.get("created_at")),
    }


COLUMNS = {
    "job": st.column_config.LinkColumn("batch", display_text=r"job\?batch=(.*)", width="medium"),
    "progress": st.column_config.ProgressColumn(
        "progress", min_value=0.0, max_value=1.0, format="percent", width="small"
    ),
}


def running_now(batches: list[dict[str, Any]]) -> None:
    """A card per running job: id, where it runs and its progress."""
    running = [b for b in batches if b.get("status") in fmt.RUNNING]
    if not running:
        return
    st.subheader(f"Running now ({len(running)})")
    for batch in running[:10]:
        completed, failed, total = fmt.counts(batch)
        with st.container(border=True):
            left, right = st.columns([3, 2])
            left.page_link(
                "views/job.py", label=batch["id"], icon=":material/open_in_new:", query_params={"batch": batch["id"]}
            )
            left.caption(
                f"{fmt.status_label(batch.get('status'))} · team {batch.get('team') or batch.get('team_id')}"
                f" · on {fmt.joined(batch.get('providers'))} · {fmt.joined(batch.get('models') or batch.get('model'))}"
            )
            right.progress(fmt.progress(batch), text=f"{completed + failed} of {total} answered ({failed} failed)")
            waiting = batch.get("waiting") or {}
            if waiting.get("detail"):
                problem = waiting.get("code") not in fmt.HEALTHY_WAITS
                left.markdown(f"{':warning: ' if problem else ''}**Waiting:** {waiting['detail']}")


class Listing(NamedTuple):
    """The jobs listed, and whether the gateway has more than it sent."""

    batches: list[dict[str, Any]]
    has_more: bool


def fetch_jobs(status: str, team: str, provider: str, since: int | None) -> Listing | None:
    """The newest 100 jobs matching the filters (None when the gateway could not be read: the error is shown)."""
    page = ui.fetch(
        lambda: ui.client().batches(
            limit=100, status=status or None, team=team or None, provider=provider or None, since=since
        ),
        "jobs",
    )
    if page is None:
        return None
    batches = [b for b in page.get("data", []) if matches(b, team, provider, since)]
    return Listing(batches, bool(page.get("has_more")))


def any_running(listing: Listing | None) -> bool:
    """Whether some listed job still runs."""
    return listing is not None and any(b.get("status") in fmt.RUNNING for b in listing.batches)


def table(listing: Listing | None) -> None:
    """Render the summary, running jobs and table."""
    if listing is None:
        return
    batches = listing.batches
    if not batches:
        st.info("No jobs match these filters yet. Submit a batch through /v1/batches and it appears here.")
        return
    by_status = pd.Series([b.get("status") for b in batches]).value_counts()
    cols = st.columns(4)
    cols[0].metric("Jobs listed", len(batches))
    cols[1].metric("Running", int(sum(by_status.get(s, 0) for s in fmt.RUNNING)))
    cols[2].metric("Completed", int(by_status.get("completed", 0)))
    cols[3].metric("Failed / expired", int(by_status.get("failed", 0) + by_status.get("expired", 0)))
    running_now(batches)
    st.subheader("All jobs")
    st.dataframe(pd.DataFrame([row(b) for b in batches]), column_config=COLUMNS, hide_index=True, key="jobs_table")
    if listing.has_more:
        st.caption("Showing the newest 100 jobs; narrow the filters to see older ones.")
    if all(b.get("providers") is None for b in batches):
        st.caption("Routing and cost columns: not available on this gateway yet.")
    st.caption(f"Updated {fmt.when(time.time())} UTC")


st.title("Jobs")
filters = st.columns([2, 2, 2, 2, 1])
status = filters[0].selectbox("Status", ["", *STATUSES], format_func=lambda s: s or "any", key="jobs_status")
team = filters[1].text_input("Team", key="jobs_team", placeholder="any").strip()
provider_names = [p.get("name", "") for p in (ui.fetch(lambda: ui.client().providers(), "providers") or [])]
provider = filters[2].selectbox(
    "Provider", ["", *provider_names], format_func=lambda p: p or "any", key="jobs_provider"
)
period = filters[3].selectbox("Created", list(PERIODS), index=3, key="jobs_period")
auto = filters[4].toggle("Live", value=True, key="jobs_auto", help=f"Every {REFRESH_S}s while jobs run")
window = PERIODS[period]
since = int(time.time()) - window if window else None

jobs = fetch_jobs(status, team, provider, since)
if auto and any_running(jobs):
    first = [jobs]  # the full run draws what it fetched; each timer rerun fetches afresh

    @st.fragment(run_every=REFRESH_S)
    def _live() -> None:
        # Only this part reruns while jobs run. A whole-app rerun on a timer would race a click on a job's
        # link, and the click could be lost (the rerun keeps the visitor on this page).
        current = first.pop() if first else fetch_jobs(status, team, provider, since)
        table(current)
        if current is not None and not any_running(current):
            st.rerun(scope="app")  # nothing runs any more: draw the page once more, without the timer

    _live()
else:
    table(jobs)
