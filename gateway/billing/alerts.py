"""Billing alerts: budget thresholds crossed, and batches costing far more per request than estimated.

Each alert is stored once (a unique ``dedup_key``): a threshold of a budget fires once per period
and limit (raising a budget's limit arms its thresholds again), an anomaly once per batch. Each
new alert is queued in the webhook outbox (when a webhook is configured) in the same transaction,
and counted in the ``batchgw_alerts_fired_total`` metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.billing.budgets import BudgetStatus, team_statuses, usd
from gateway.db import billing as db
from gateway.db.models import BillingAlert
from gateway.metrics import record_alert_fired
from gateway.settings import BillingSettings, Settings

log = logging.getLogger(__name__)

KINDS = ("budget_threshold", "anomaly", "canary", "budget_stop", "provider_auth_failed")


def alert_view(alert: BillingAlert) -> dict[str, Any]:
    """An alert as the admin API and the webhook show it."""
    return {
        "id": alert.id,
        "kind": alert.kind,
        "message": alert.message,
        "budget_id": alert.budget_id,
        "team_id": alert.team_id,
        "batch_id": alert.batch_id,
        "period": alert.period,
        "period_start": alert.period_start,
        "threshold": alert.threshold,
        "spent_usd": alert.spent_usd,
        "limit_usd": alert.limit_usd,
        "created_at": alert.created_at,
        "acknowledged_at": alert.acknowledged_at,
    }


def _threshold_alert(status: BudgetStatus, threshold: float, now: float) -> BillingAlert:
    budget = status.budget
    return BillingAlert(
        kind="budget_threshold",
        dedup_key=f"budget:{budget.id}:{int(status.period_start)}:{threshold:g}:{budget.limit_usd:g}",
        budget_id=budget.id,
        team_id=budget.team_id,
        period=budget.period,
        period_start=status.period_start,
        threshold=threshold,
        spent_usd=status.spent_usd,
        limit_usd=budget.limit_usd,
        message=(
            f"{threshold:.0%} of the {status.label} reached: {usd(status.spent_usd)} of "
            f"{usd(budget.limit_usd)} spent{' (hard limit)' if budget.hard else ''}."
        ),
        created_at=now,
    )


async def _anomaly(
    session: AsyncSession, team_id: str, batch_id: str, settings: BillingSettings, now: float
) -> BillingAlert | None:
    batch = await db.get_batch(session, batch_id)
    if batch is None or not batch.estimated_cost_usd or batch.request_total <= 0:
        return None
    requests, cost = await db.batch_ledger_totals(session, batch_id)
    if requests < settings.anomaly_min_requests:
        return None
    estimated = batch.estimated_cost_usd / batch.request_total
    actual = cost / requests
    if actual <= settings.anomaly_factor * estimated:
        return None
    name = await db.team_name(session, team_id) or team_id
    return BillingAlert(
        kind="anomaly",
        dedup_key=f"anomaly:{batch_id}",
        team_id=team_id,
        batch_id=batch_id,
        threshold=settings.anomaly_factor,
        spent_usd=cost,
        limit_usd=estimated * requests,
        message=(
            f"Batch {batch_id} of team '{name}' costs {usd(actual)} per request, {actual / estimated:.1f}x its "
            f"estimate of {usd(estimated)} ({requests} requests finished, {usd(cost)} spent)."
        ),
        created_at=now,
    )


async def after_spend(
    session: AsyncSession, team_id: str, batch_id: str, settings: BillingSettings | None = None
) -> list[BillingAlert]:
    """Fire the alerts that spend just recorded in the ledger calls for; return the new ones.

    Call it after inserting the ledger rows, in the same transaction (it does not commit), and
    :func:`count_fired` with its answer once that transaction committed. Pass
    ``context.settings.billing``; without it the settings are read from the environment.
    """
    config = settings or Settings().billing
    now = time.time()
    candidates: list[BillingAlert] = []
    for status in await team_statuses(session, team_id, now=now):
        for threshold in status.budget.thresholds:
            if status.spent_usd + 1e-9 >= threshold * status.budget.limit_usd:
                candidates.append(_threshold_alert(status, threshold, now))
    anomaly = await _anomaly(session, team_id, batch_id, config, now)
    if anomaly is not None:
        candidates.append(anomaly)
    fired: list[BillingAlert] = []
    for candidate in candidates:
        stored = await db.insert_alert_once(session, candidate)
        if stored is None or stored.id is None:
            continue
        fired.append(stored)
        if config.webhook_url is not None:
            await db.queue_webhook(session, stored.id, now)
        log.info("billing alert %s (%s): %s", stored.id, stored.kind, stored.message)
    return fired


async def provider_auth_failed(
    session: AsyncSession, provider: str, message: str, opened_at: float, settings: BillingSettings
) -> BillingAlert | None:
    """Alert that a provider refused the gateway's key (once per opening of its circuit); None if already raised.

    Not about money, but it goes the same way as billing alerts: stored, listed, counted and posted to the
    alert webhook, because nothing reaches that provider until an operator fixes the key.
    """
    alert = BillingAlert(
        kind="provider_auth_failed",
        dedup_key=f"provider_auth:{provider}:{int(opened_at)}",
        message=f"Provider '{provider}' refused the gateway's key: {message} Work waits or moves elsewhere.",
        created_at=time.time(),
    )
    stored = await db.insert_alert_once(session, alert)
    if stored is None or stored.id is None:
        return None
    if settings.webhook_url is not None:
        await db.queue_webhook(session, stored.id, stored.created_at)
    log.warning("alert %s (%s): %s", stored.id, stored.kind, stored.message)
    return stored


def count_fired(alerts: Sequence[BillingAlert]) -> None:
    """Count new alerts in ``batchgw_alerts_fired_total``; call it once their transaction committed."""
    for alert in alerts:
        record_alert_fired(alert.kind)
