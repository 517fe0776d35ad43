"""``GET /metrics``: Prometheus text exposition. Open to scrapers: it holds no secrets."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import cast

from litestar import Response, get
from litestar.datastructures import State
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from gateway import metrics
from gateway.billing.budgets import budget_statuses
from gateway.context import GatewayContext
from gateway.db.stats import BudgetUse, MetricsSnapshot, metrics_snapshot
from gateway.db.unit_of_work import reading

log = logging.getLogger(__name__)


def http_metrics(app: ASGIApp) -> ASGIApp:
    """Time every routed request into ``batchgw_http_request_duration_seconds`` (route template, method and
    status class: labels the plugin that ships with the framework does not offer)."""

    async def timed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method = cast("HTTPScope", scope)["method"]
        started, status = time.perf_counter(), 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_noting_status)
        finally:
            route = scope.get("path_template") or "unmatched"
            metrics.record_http_request(
                route=route, method=method, status=status, seconds=time.perf_counter() - started
            )

    return timed


@get("/metrics", include_in_schema=False)
async def metrics_endpoint(state: State) -> Response[bytes]:
    """This process's counters and histograms plus state gauges read from the database now."""
    context: GatewayContext = state.context
    snapshot: MetricsSnapshot | None
    try:
        snapshot = await read_snapshot(context, time.time())
    except Exception:
        log.warning("metrics: the database could not be read; state gauges left out", exc_info=True)
        snapshot = None
    body = metrics.render(snapshot, (adapter.name for adapter in context.providers))
    return Response(body, media_type="text/plain", headers={"content-type": metrics.CONTENT_TYPE})


async def read_snapshot(context: GatewayContext, now: float) -> MetricsSnapshot:
    """Every state gauge's value, budgets counted exactly as the billing package counts them."""
    async with reading(context.sessions) as session:
        snapshot = await metrics_snapshot(session, now)
        statuses = await budget_statuses(session, now)
    budgets = [
        BudgetUse(
            scope=f"team:{status.team_name or status.budget.team_id}" if status.budget.team_id else "global",
            period=status.budget.period,
            limit_usd=status.budget.limit_usd,
            spent_usd=status.spent_usd,
            utilization=status.utilisation,
            reserved_usd=status.reserved_usd,
            hard=status.budget.hard,
        )
        for status in statuses
    ]
    return dataclasses.replace(snapshot, budgets=budgets)
