"""Job detail: shards, routing decisions and failovers, a sample of errors, and the operator's actions (cancel,
retry, and release or cancel a batch held after its canary)."""

from __future__ import annotations

import functools
import json
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import format as fmt
from dashboard import ui
from dashboard.client import GatewayError

ERROR_SAMPLE = 20


def pick_batch() -> str | None:
    """The batch named by ``?batch=``, else one chosen from the newest jobs."""
    chosen = st.query_params.get("batch")
    if chosen:
        return str(chosen)
    page = ui.fetch(lambda: ui.client().batches(limit=50), "jobs")
    ids = [b["id"] for b in (page or {}).get("data", [])]
    if not ids:
        st.info("No jobs yet: nothing to show.")
        return None
    picked = st.selectbox("Job", ids, key="job_pick")
    if picked:
        st.query_params["batch"] = picked
    return picked


def header(batch: dict[str, Any]) -> None:
    """Status, team, routing and cost at a glance."""
    completed, failed, total = fmt.counts(batch)
    st.title(f"Job {batch['id']}")
    st.caption(
        f"team **{batch.get('team') or batch.get('team_id')}** · endpoint {batch.get('endpoint')} · "
        f"model {fmt.joined(batch.get('models') or batch.get('model'))} · "
        f"policy {batch.get('policy') or fmt.MISSING} · "
        f"created {fmt.when(batch.get('created_at'))} UTC"
    )
    cols = st.columns([3, 2, 2, 2, 2, 2])
    cols[0].metric("Status", fmt.status_label(batch.get("status")))
    cols[1].metric("Answered", f"{completed + failed} / {total}", help="Succeeded + failed of all requests")
    cols[2].metric("Failed", failed)
    cols[3].metric(
        "Cost", fmt.money(batch.get("cost_usd")), help=f"estimated {fmt.money(batch.get('estimated_cost_usd'))}"
    )
    cols[4].metric(
        "Saved", fmt.money(batch.get("savings_usd")), help="Against the cheapest synchronous price of the model"
    )
    cols[5].metric("Turnaround", fmt.duration(batch.get("turnaround_s")))
    st.progress(fmt.progress(batch))
    waiting = batch.get("waiting") or {}
    if waiting.get("detail") and batch.get("status") in fmt.RUNNING:
        show = st.warning if waiting.get("code") not in fmt.HEALTHY_WAITS else st.info
        show(f"**Waiting:** {waiting['detail']}", icon=":material/hourglass_top:")
    paid_twice = batch.get("paid_twice_usd") or 0
    if paid_twice:
        st.error(
            f"**Paid twice: {fmt.money(paid_twice)}.** Provider batches this job moved off still ran requests that "
            "were answered elsewhere; what they billed is included in the cost above.",
            icon=":material/payments:",
        )


def canary_hold(batch: dict[str, Any]) -> None:
    """A batch held after its canary: what was projected and why, and the operator's two choices."""
    hold = batch.get("hold") or {}
    if hold.get("reason") != "canary" or batch.get("status") != "in_progress":
        return
    admin = ui.client()
    st.warning(
        f"**Held after its canary:** {hold.get('detail') or fmt.MISSING}. Projected "
        f"{fmt.money(hold.get('canary_projected_usd'))} against an estimate of "
        f"{fmt.money(batch.get('estimated_cost_usd'))}.",
        icon=":material/front_hand:",
    )
    cols = st.columns(4)
    if cols[0].button("Release: run the rest", key="canary_release", type="primary"):
        result = ui.act(lambda: admin.release_canary(batch["id"]), "Released")
        if result:
            st.session_state["job_notice"] = "Released: the rest of the job runs now."
            st.rerun()
    if cols[1].button("Cancel the job", key="canary_cancel"):
        result = ui.act(lambda: admin.cancel_canary(batch["id"]), "Cancelled")
        if result:
            st.session_state["job_notice"] = "Cancelled: the canary's answers are kept, the rest is not run."
            st.rerun()


def shards(batch: dict[str, Any]) -> None:
    """One row per shard: where it ran, how far it got, when."""
    st.subheader("Shards")
    rows = batch.get("shards") or []
    if not rows:
        st.info("No shards yet: the job has not been routed.")
        return
    table = [
        {
            "seq": s.get("seq"),
            "provider": s.get("provider"),
            "model": s.get("provider_model") or s.get("model"),
            "mode": s.get("mode") or fmt.MISSING,
            "state": s.get("state"),
            "end": s.get("end_reason") or fmt.MISSING,
            "provider status": s.get("provider_status") or fmt.MISSING,
            "requests": s.get("request_count"),
            "completed": s.get("completed"),
            "failed": s.get("failed"),
            "cost": fmt.money(s.get("cost_usd")),
            "attempts": s.get("attempts"),
            "submitted": fmt.when(s.get("submitted_at")),
            "finished": fmt.when(s.get("finished_at")),
            "took": fmt.duration(
                s["finished_at"] - s["submitted_at"] if s.get("finished_at") and s.get("submitted_at") else None
            ),
            "waiting": ((s.get("waiting") or {}).get("detail") or "") if s.get("state") != "done" else "",
            "last error": s.get("last_error") or "",
        }
        for s in rows
    ]
    st.dataframe(pd.DataFrame(table), hide_index=True, key="shards_table")
    attempts = [(s.get("seq"), entry) for s in rows for entry in s.get("attempt_log") or []]
    attempts += [("batch", entry) for entry in batch.get("attempt_log") or []]
    history = [{"shard": where, **entry, "at": fmt.when(entry.get("at"))} for where, entry in attempts]
    if history:
        with st.expander(f"Failed attempts ({len(history)})"):
            st.dataframe(pd.DataFrame(history), hide_index=True, key="attempt_history")


def abandoned(batch: dict[str, Any]) -> None:
    """Provider batches work moved off: cancelled, followed to their end, and what they billed."""
    rows = batch.get("abandoned_provider_batches") or []
    if not rows:
        return
    st.subheader("Abandoned provider batches")
    st.caption("Kept until their provider ends them: each gets a cancel, is polled, and what it billed is recorded.")
    table = [
        {
            "provider": r.get("provider"),
            "provider batch": r.get("provider_batch_id") or fmt.MISSING,
            "state": r.get("state"),
            "provider status": r.get("provider_status") or fmt.MISSING,
            "cancel sent": fmt.when(r.get("cancel_sent_at")),
            "requests billed": r.get("requests_billed"),
            "billed": fmt.money(r.get("cost_usd")),
            "why": r.get("reason") or "",
        }
        for r in rows
    ]
    st.dataframe(pd.DataFrame(table), hide_index=True, key="abandoned_table")


def decisions(batch: dict[str, Any]) -> None:
    """Each routing decision with its reason; failovers and retries with their cause."""
    st.subheader("Routing decisions")
    if "decisions" not in batch:
        st.info("Routing decisions: not available on this gateway yet.")
        return
    if not batch["decisions"]:
        st.info("No routing decisions recorded yet.")
        return
    for decision in batch["decisions"]:
        kind = decision.get("kind", "route")
        title = (
            f"{kind}: {decision.get('model')} → {decision.get('chosen_provider') or 'no provider'}"
            f" ({decision.get('request_count', 0)} requests, policy {decision.get('policy')})"
        )
        with st.expander(title, expanded=kind != "route"):
            st.markdown(f"**Why:** {decision.get('reason') or fmt.MISSING}")
            if decision.get("cause"):
                st.markdown(f"**Cause:** {decision['cause']}")
            candidates = decision.get("candidates") or []
            if candidates:
                frame = pd.DataFrame(
                    {
                        "provider": c.get("provider"),
                        "model": c.get("provider_model"),
                        "mode": c.get("mode"),
                        "estimated": fmt.money(c.get("estimated_cost_usd")),
                        "note": c.get("reason") or "",
                    }
                    for c in candidates
                )
                st.dataframe(frame, hide_index=True)
            st.caption(fmt.when(decision.get("created_at")) + " UTC")


def error_sample(batch: dict[str, Any]) -> None:
    """The first failed requests with their error."""
    st.subheader("Errors")
    validation = (batch.get("errors") or {}).get("data") or []
    if validation:
        st.dataframe(pd.DataFrame(validation), hide_index=True, key="validation_errors")
    file_id = batch.get("error_file_id")
    if not file_id:
        if not validation:
            st.success("No failed requests.")
        return
    try:
        head = ui.client().file_head(file_id)
    except GatewayError as error:
        ui.show_error(error, "error sample")
        return
    sample = []
    for raw in head.splitlines()[:ERROR_SAMPLE]:
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # the last line of the sample may be cut
        response = line.get("response") or {}
        problem = line.get("error") or (response.get("body") or {}).get("error") or {}
        sample.append(
            {
                "custom_id": line.get("custom_id"),
                "status": response.get("status_code"),
                "code": problem.get("code"),
                "message": problem.get("message"),
            }
        )
    st.caption(f"First {len(sample)} of {fmt.counts(batch)[1]} failed requests")
    st.dataframe(pd.DataFrame(sample), hide_index=True, key="error_sample")


def actions(batch: dict[str, Any]) -> None:
    """Cancel, retry the failed requests as a new batch, download the output and error files."""
    st.subheader("Actions")
    admin = ui.client()
    status = batch.get("status")
    cols = st.columns(4)
    if cols[0].button("Cancel job", key="cancel", disabled=status not in ("validating", "in_progress", "finalizing")):
        result = ui.act(lambda: admin.cancel(batch["id"]), "Cancel requested")
        if result:
            st.session_state["job_notice"] = f"Cancel requested: the job is now {result.get('status')}."
            st.rerun()
    retry_ok = status in fmt.FINISHED and bool(batch.get("error_file_id"))
    if cols[1].button("Retry failed requests", key="retry", disabled=not retry_ok):
        result = ui.act(lambda: admin.retry(batch["id"]), "Retry created")
        if result:
            st.session_state["job_notice"] = f"Retry created as a new batch: {result['id']}"
            st.session_state["job_retry"] = (batch["id"], result["id"])
            st.rerun()
    for col, kind in ((cols[2], "output"), (cols[3], "error")):
        file_id = batch.get(f"{kind}_file_id")
        if file_id:
            col.download_button(
                f"Download {kind} file",
                data=functools.partial(admin.file_content, file_id),
                file_name=f"{batch['id']}_{kind}.jsonl",
                mime="application/jsonl",
                key=f"download_{kind}",
                on_click="ignore",
            )
        else:
            col.button(f"No {kind} file", disabled=True, key=f"no_{kind}")
    original, retry_id = st.session_state.get("job_retry") or (None, None)
    if retry_id and original == batch["id"]:
        st.page_link(
            "views/job.py",
            label=f"Open the retry {retry_id}",
            icon=":material/replay:",
            query_params={"batch": retry_id},
        )


picked = pick_batch()
if picked:
    batch_id: str = picked
    detail = ui.fetch(lambda: ui.client().batch(batch_id), "job")
    if detail is not None:
        header(detail)
        notice = st.session_state.pop("job_notice", None)
        if notice:
            st.success(notice)
        canary_hold(detail)
        actions(detail)
        shards(detail)
        abandoned(detail)
        decisions(detail)
        error_sample(detail)
        if detail.get("status") in fmt.RUNNING:

            @st.fragment(run_every=3)
            def _refresh() -> None:
                if st.session_state.get("_job_tick"):
                    st.rerun(scope="app")
                st.session_state["_job_tick"] = True

            st.session_state["_job_tick"] = False
            _refresh()
