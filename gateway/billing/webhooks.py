"""The alert webhook: posts each queued alert once, with retries and exponential backoff.

The body is Slack-compatible: ``{"text": "<the alert's sentence>", "alert": {...}}``. An attempt
is claimed with a compare-and-set on the outbox row, so several workers never post the same alert
at the same time; a 2xx answer marks it delivered. After ``webhook_max_attempts`` failures the row
is marked ``failed`` with the last error. Every attempt is counted in
``batchgw_alert_webhook_deliveries_total{outcome}``. The webhook URL (often a secret) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from gateway.billing.alerts import alert_view
from gateway.context import GatewayContext
from gateway.db import billing as db
from gateway.db import outbox
from gateway.db.models import BillingAlert, WebhookDelivery
from gateway.db.unit_of_work import reading, transaction
from gateway.metrics import record_webhook_attempt

log = logging.getLogger(__name__)

BATCH_SIZE = 20
"""Outbox rows taken per pass."""


def payload(alert: BillingAlert) -> dict[str, object]:
    """The JSON body posted for an alert."""
    return {"text": alert.message, "alert": alert_view(alert)}


async def _post(client: httpx.AsyncClient, url: str, alert: BillingAlert, timeout: float) -> str | None:
    """POST the alert; None on a 2xx answer, else a short error without the URL."""
    try:
        response = await client.post(url, json=payload(alert), timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: request failed"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


async def _attempt(context: GatewayContext, delivery: WebhookDelivery, alert: BillingAlert, url: str) -> bool:
    config = context.settings.billing
    async with transaction(context.sessions) as session:
        claimed = await outbox.claim(session, delivery, time.time() + config.webhook_timeout_s + outbox.LEASE_MARGIN_S)
    if not claimed or delivery.id is None:
        return False
    attempt = delivery.attempts + 1
    error = await _post(context.http, url, alert, config.webhook_timeout_s)
    if error is None:
        state, next_at, outcome = "delivered", time.time(), "delivered"
    elif attempt >= config.webhook_max_attempts:
        state, next_at, outcome = "failed", time.time(), "gave_up"
        log.warning("gave up posting alert %s after %d attempts: %s", alert.id, attempt, error)
    else:
        state, outcome = "pending", "failed"
        next_at = time.time() + min(config.webhook_backoff_s * 2 ** (attempt - 1), config.webhook_backoff_max_s)
        log.info("posting alert %s failed (attempt %d): %s; retrying", alert.id, attempt, error)
    async with transaction(context.sessions) as session:
        await outbox.finish(session, delivery, state=state, next_attempt_at=next_at, last_error=error)
    record_webhook_attempt(outcome)
    return error is None


async def deliver_due(context: GatewayContext) -> int:
    """Post every alert whose attempt is due; return how many were delivered now."""
    secret = context.settings.billing.webhook_url
    if secret is None:
        return 0
    url = secret.get_secret_value()
    async with reading(context.sessions) as session:
        due = await db.due_deliveries(session, time.time(), BATCH_SIZE)
    delivered = 0
    for delivery, alert in due:
        if await _attempt(context, delivery, alert, url):
            delivered += 1
    return delivered


async def run_webhook_loop(context: GatewayContext, stop: asyncio.Event) -> None:
    """Deliver due alerts every ``webhook_poll_interval_s`` until ``stop`` is set."""
    interval = context.settings.billing.webhook_poll_interval_s
    while not stop.is_set():
        try:
            await deliver_due(context)
        except Exception:
            log.exception("alert webhook pass failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
