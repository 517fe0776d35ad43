"""Admin billing API (guarded by the admin key): spend from the ledger, budgets, billing alerts, estimates and
the advisor, and the release or cancel of batches held after their canary."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Body, Parameter

from gateway.api.auth import require_admin
from gateway.api.estimates import estimate_stored, parse_request
from gateway.api.inputs import MAX_JSON_BODY_BYTES, check_json_request
from gateway.api.objects import batch_object
from gateway.api.openapi import ADMIN_ESTIMATE_BODY, ADMIN_SECURITY, DB_ID, admin_errors, page_size, with_request_body
from gateway.billing import budgets
from gateway.billing.alerts import alert_view
from gateway.billing.budgets import PERIODS, BudgetStatus
from gateway.context import GatewayContext
from gateway.db import billing as db
from gateway.db import repo
from gateway.db.models import Batch, BillingAlert, WebhookDelivery
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import Conflict, bad_request, not_found
from gateway.pipeline import canary
from gateway.textcheck import check_text

MAX_BUCKETS = 10_000
MAX_LIMIT_USD = 1e9
MAX_THRESHOLDS = 20
MAX_THRESHOLD = 10.0
_DEFAULT_RANGE_S = {"hour": 2 * 86400, "day": 30 * 86400}


class BudgetIn(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PUT /admin/budgets``: create the budget of a scope and period, or replace it."""

    scope: str
    """'global' (all teams together) or 'team:<team name>'."""
    period: str
    """'day' or 'month': UTC calendar periods."""
    limit_usd: float
    """The limit in USD for one period (> 0)."""
    hard: bool = False
    """Refuse new batches (429) and pause the team's queued shards once spent."""
    thresholds: list[float] | None = None
    """Fractions of the limit that raise an alert; default from settings (0.5, 0.8, 1.0)."""


def budget_view(status: BudgetStatus) -> dict[str, Any]:
    """A budget with its current period's spend, reservations and utilisation."""
    budget = status.budget
    scope = "global" if budget.team_id is None else f"team:{status.team_name or budget.team_id}"
    return {
        "id": budget.id,
        "object": "budget",
        "scope": scope,
        "team_id": budget.team_id,
        "period": budget.period,
        "limit_usd": budget.limit_usd,
        "hard": budget.hard,
        "thresholds": budget.thresholds,
        "period_start": status.period_start,
        "period_end": status.period_end,
        "spent_usd": status.spent_usd,
        "reserved_usd": status.reserved_usd,
        "remaining_usd": max(0.0, budget.limit_usd - status.spent_usd - status.reserved_usd),
        "utilisation": status.utilisation,
        "exhausted": status.exhausted,
        "created_at": budget.created_at,
        "updated_at": budget.updated_at,
    }


def _alert_with_delivery(alert: BillingAlert, delivery: WebhookDelivery | None) -> dict[str, Any]:
    webhook = None
    if delivery is not None:
        webhook = {
            "state": delivery.state,
            "attempts": delivery.attempts,
            "delivered_at": delivery.delivered_at,
            "last_error": delivery.last_error,
        }
    return alert_view(alert) | {"object": "billing_alert", "webhook": webhook}


def _checked_budget(body: BudgetIn, default_thresholds: list[float]) -> tuple[str | None, list[float]]:
    """The team name of the scope (None: global) and the thresholds; 400 on anything invalid."""
    scope = check_text(body.scope, "scope").strip()
    check_text(body.period, "period")
    team: str | None = None
    if scope.startswith("team:") and scope[5:].strip():
        team = scope[5:].strip()
    elif scope != "global":
        raise bad_request(f"Invalid 'scope': {body.scope!r}. Use 'global' or 'team:<team name>'.", param="scope")
    if body.period not in PERIODS:
        raise bad_request(f"Invalid 'period': {body.period!r}. Use 'day' or 'month'.", param="period")
    if not math.isfinite(body.limit_usd) or not 0 < body.limit_usd <= MAX_LIMIT_USD:
        raise bad_request("'limit_usd' must be a number above 0 (USD per period).", param="limit_usd")
    thresholds = default_thresholds if body.thresholds is None else body.thresholds
    if len(thresholds) > MAX_THRESHOLDS:
        raise bad_request(f"'thresholds' may hold at most {MAX_THRESHOLDS} values.", param="thresholds")
    for value in thresholds:
        if not math.isfinite(value) or not 0 < value <= MAX_THRESHOLD:
            raise bad_request(
                f"Each threshold is a fraction of the limit above 0 and at most {MAX_THRESHOLD:g}; got {value!r}.",
                param="thresholds",
            )
    return team, thresholds


class AdminBillingController(Controller):
    """``/admin``: spend, budgets and billing alerts; every route needs the admin key."""

    path = "/admin"
    dependencies = {"_admin": Provide(require_admin)}
    tags = ["billing"]
    security = ADMIN_SECURITY

    @get("/spend", summary="Spend from the ledger by time bucket and provider, model or team", responses=admin_errors())
    async def spend(
        self,
        state: State,
        _admin: None,
        group_by: Annotated[str, Parameter(description="'provider', 'model' or 'team'.")] = "provider",
        bucket: Annotated[str, Parameter(description="'hour' or 'day' (UTC).")] = "day",
        since: Annotated[
            float | None, Parameter(description="Unix seconds; default 2 days (hour) or 30 days back.")
        ] = None,
        until: Annotated[float | None, Parameter(description="Unix seconds, exclusive; default now.")] = None,
    ) -> dict[str, Any]:
        """Cost, list-price cost, savings, requests and tokens per bucket and key, with totals."""
        context: GatewayContext = state.context
        if group_by not in db.SPEND_GROUPS:
            raise bad_request(f"Invalid 'group_by': {group_by!r}. Use provider, model or team.", param="group_by")
        if bucket not in db.BUCKET_SECONDS:
            raise bad_request(f"Invalid 'bucket': {bucket!r}. Use hour or day.", param="bucket")
        end = time.time() if until is None else until
        start = end - _DEFAULT_RANGE_S[bucket] if since is None else since
        if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
            raise bad_request("'since' must be before 'until' (Unix seconds).", param="since")
        if (end - start) / db.BUCKET_SECONDS[bucket] > MAX_BUCKETS:
            raise bad_request(f"The range holds more than {MAX_BUCKETS} {bucket} buckets; narrow it.", param="since")
        async with reading(context.sessions) as session:
            rows = await db.spend_by(session, group_by, bucket, start, end)
        data = [
            {
                "bucket_start": r.bucket_start,
                "key": r.key,
                "cost_usd": r.cost_usd,
                "list_cost_usd": r.list_cost_usd,
                "savings_usd": round(r.list_cost_usd - r.cost_usd, 10),
                "requests": r.requests,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
            }
            for r in rows
        ]
        cost = sum(r.cost_usd for r in rows)
        list_cost = sum(r.list_cost_usd for r in rows)
        totals = {
            "cost_usd": cost,
            "list_cost_usd": list_cost,
            "savings_usd": round(list_cost - cost, 10),
            "requests": sum(r.requests for r in rows),
            "input_tokens": sum(r.input_tokens for r in rows),
            "output_tokens": sum(r.output_tokens for r in rows),
        }
        query = {"group_by": group_by, "bucket": bucket, "since": start, "until": end}
        return {"object": "list", "data": data, "totals": totals, "query": query}

    @get("/budgets", summary="Budgets with current spend, reservations and utilisation", responses=admin_errors())
    async def list_budgets(self, state: State, _admin: None) -> dict[str, Any]:
        """Every budget; spent and reserved are for the current UTC day or month."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            statuses = await budgets.budget_statuses(session)
        return {"object": "list", "data": [budget_view(s) for s in statuses]}

    @put(
        "/budgets",
        status_code=200,
        summary="Create or replace the budget of a scope and period",
        responses=admin_errors(404, 413),
        request_max_body_size=MAX_JSON_BODY_BYTES,
        before_request=check_json_request,
    )
    async def put_budget(
        self,
        state: State,
        _admin: None,
        data: Annotated[BudgetIn, Body(description="One budget per scope and period; a second PUT replaces it.")],
    ) -> dict[str, Any]:
        """Raising a hard budget resumes the team's paused work within seconds."""
        context: GatewayContext = state.context
        team, thresholds = _checked_budget(data, context.settings.billing.default_thresholds)
        async with transaction(context.sessions) as session:
            team_id = await db.team_id_named(session, team, param="scope")
            budget = await budgets.set_budget(session, team_id, data.period, data.limit_usd, data.hard, thresholds)
            await session.flush()
            status = await budgets.status_of(session, budget, team)
        return budget_view(status)

    @delete("/budgets/{budget_id:int}", status_code=200, summary="Delete a budget", responses=admin_errors(404))
    async def delete_budget(
        self, state: State, _admin: None, budget_id: Annotated[int, Parameter(**DB_ID)]
    ) -> dict[str, Any]:
        """Its alerts stay."""
        context: GatewayContext = state.context
        async with transaction(context.sessions) as session:
            deleted = await db.delete_budget(session, budget_id)
        if not deleted:
            raise not_found("budget", str(budget_id))
        return {"id": budget_id, "object": "budget.deleted", "deleted": True}

    @get("/alerts", summary="Billing alerts, newest first", responses=admin_errors())
    async def list_alerts(
        self,
        state: State,
        _admin: None,
        acknowledged: Annotated[bool | None, Parameter(description="Only (un)acknowledged alerts.")] = None,
        limit: Annotated[int, Parameter(**page_size(500, "Alerts to return, 1 to 500."))] = 50,
    ) -> dict[str, Any]:
        """Budget thresholds crossed and cost anomalies, with their webhook delivery state."""
        context: GatewayContext = state.context
        if not 1 <= limit <= 500:
            raise bad_request("'limit' must be between 1 and 500.", param="limit")
        async with reading(context.sessions) as session:
            alerts = await db.list_alerts(session, acknowledged, limit)
            deliveries = await db.deliveries_of(session, [a.id for a in alerts if a.id is not None])
        data = [_alert_with_delivery(a, deliveries.get(a.id or 0)) for a in alerts]
        return {"object": "list", "data": data}

    @post("/alerts/{alert_id:int}/ack", status_code=200, summary="Acknowledge an alert", responses=admin_errors(404))
    async def ack_alert(
        self, state: State, _admin: None, alert_id: Annotated[int, Parameter(**DB_ID)]
    ) -> dict[str, Any]:
        """Marks the alert seen; acknowledging twice keeps the first time."""
        context: GatewayContext = state.context
        async with transaction(context.sessions) as session:
            alert = await db.get_alert(session, alert_id)
            if alert is None:
                raise not_found("alert", str(alert_id))
            if alert.acknowledged_at is None:
                alert.acknowledged_at = time.time()
                session.add(alert)
                await session.flush()
            delivery = await db.delivery_of(session, alert_id)
        return _alert_with_delivery(alert, delivery)

    @post(
        "/estimate",
        status_code=200,
        summary="Estimate an uploaded file: cost, turnaround and a recommendation",
        responses=admin_errors(404, 413),
        operation_class=with_request_body(ADMIN_ESTIMATE_BODY),
        request_max_body_size=MAX_JSON_BODY_BYTES,
    )
    async def estimate(self, request: Request, state: State, _admin: None) -> dict[str, Any]:
        """Body ``{"file_id", "model"?, "policy"?, "deadline"?, "endpoint"?, "team"?}``: per offer the batch and
        synchronous cost, savings, the token range and its basis, expected turnaround and synchronous fan-out
        time; per model the advisor's recommendation for the deadline. Estimates learn from the history of
        ``team`` (a name; default: the team that uploaded the file)."""
        context: GatewayContext = state.context
        parsed = parse_request(context, await request.body(), admin=True)
        async with reading(context.sessions) as session:
            stored = await repo.get_file_any_team(session, parsed.file_id)
            if stored is None:
                raise not_found("file", parsed.file_id, param="file_id")
            team_id = stored.team_id
            if parsed.team is not None:
                team = await db.team_by_name(session, parsed.team)
                if team is None:
                    raise not_found("team", parsed.team, param="team")
                team_id = team.id
        return await estimate_stored(context, stored, parsed, team_id)

    @get("/canaries", summary="Batches held for an operator after their canary", responses=admin_errors())
    async def held_canaries(self, state: State, _admin: None) -> dict[str, Any]:
        """Unfinished batches whose canary projected too much, oldest first, with what was projected and why."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            rows = await db.held_batches(session, canary.HOLD)
            names = await repo.team_names(session, [row.team_id for row in rows])
        return {"object": "list", "data": [held_view(row, names.get(row.team_id)) for row in rows]}

    @post(
        "/batches/{batch_id:str}/canary/release",
        status_code=200,
        summary="Release a batch held after its canary",
        responses=admin_errors(404, 409),
    )
    async def release_canary(self, state: State, _admin: None, batch_id: str) -> dict[str, Any]:
        """The held requests run; the batch's reservation rises to the canary's projection (a hard budget that
        cannot take it stops the batch before anything more is spent: raise the budget first). 409 unless held."""
        context: GatewayContext = state.context
        async with transaction(context.sessions) as session:
            row = await _held(session, batch_id)
            await canary.release(session, row)
            await session.flush()
            await session.refresh(row)
            names = await repo.team_names(session, [row.team_id])
        context.work_available.set()
        return held_view(row, names.get(row.team_id))

    @post(
        "/batches/{batch_id:str}/canary/cancel",
        status_code=200,
        summary="Cancel a batch held after its canary",
        responses=admin_errors(404, 409),
    )
    async def cancel_canary(self, state: State, _admin: None, batch_id: str) -> dict[str, Any]:
        """The held requests are not run (error lines ``batch_cancelled``); the canary's answers are delivered and
        the batch ends ``cancelled``, with an error saying an operator cancelled it after its canary. 409 unless
        held."""
        context: GatewayContext = state.context
        async with transaction(context.sessions) as session:
            row = await _held(session, batch_id)
            error = {
                "code": "canary_cancelled",
                "message": f"Cancelled by an operator after its canary: {row.hold_detail or 'see its decisions'}.",
                "param": None,
                "line": None,
            }
            await repo.update_batch_if(
                session,
                batch_id,
                expected_status=row.status,
                values={"errors": [*(row.errors or []), error], "hold_reason": None, "hold_detail": None},
            )
            await repo.request_cancel(session, row)
            await session.flush()
            await session.refresh(row)
            names = await repo.team_names(session, [row.team_id])
        context.work_available.set()
        return held_view(row, names.get(row.team_id))


async def _held(session: Any, batch_id: str) -> Batch:
    row = await repo.get_batch(session, None, batch_id)
    if row is None:
        raise not_found("batch", batch_id)
    if row.hold_reason != canary.HOLD or row.status != "in_progress":
        raise Conflict(
            f"Batch '{batch_id}' is not held after its canary (status '{row.status}').",
            code="batch_not_held",
        )
    return row


def held_view(row: Batch, team: str | None) -> dict[str, Any]:
    """A batch with its hold: why it waits, what its canary projected, its estimate."""
    return batch_object(row) | {
        "team": team,
        "hold_reason": row.hold_reason,
        "hold_detail": row.hold_detail,
        "canary_projected_usd": row.canary_projected_usd,
        "estimated_cost_usd": row.estimated_cost_usd,
        "cost_usd": round(row.cost_usd, 6),
    }
