"""Alert webhook: a real HTTP receiver on loopback that fails first; delivery exactly once after retries; every
attempt counted by outcome in ``batchgw_alert_webhook_deliveries_total``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlmodel import select

from gateway.billing.alerts import after_spend
from gateway.billing.budgets import set_budget
from gateway.billing.webhooks import deliver_due, run_webhook_loop
from gateway.context import GatewayContext
from gateway.db.models import WebhookDelivery
from gateway.metrics import WEBHOOK_OUTCOMES
from gateway.settings import BillingSettings, Settings
from tests.billing.conftest import Receiver, Seeder
from tests.conftest import free_port

WEBHOOK = "batchgw_alert_webhook_deliveries"


def _deliveries() -> dict[str, float]:
    """``batchgw_alert_webhook_deliveries_total`` by outcome, in this process."""
    return {o: REGISTRY.get_sample_value(f"{WEBHOOK}_total", {"outcome": o}) or 0.0 for o in WEBHOOK_OUTCOMES}


def _context(seed: Seeder, tmp_path: Path, url: str | None, **billing: Any) -> GatewayContext:
    config = BillingSettings(webhook_url=url, **{"webhook_backoff_s": 0.05, "webhook_poll_interval_s": 0.05} | billing)
    return GatewayContext.create(Settings(database_url=seed.url, data_dir=tmp_path, billing=config))


async def _fire_one_alert(seed: Seeder, config: BillingSettings) -> int:
    acme = await seed.team("acme")
    batch = await seed.batch(acme)
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 10.0, True, [1.0])
        await session.commit()
    await seed.spend(acme, batch, 12.5)
    async with seed.sessions() as session:
        fired = await after_spend(session, acme, batch, config)
        await session.commit()
    assert len(fired) == 1 and fired[0].id is not None
    return fired[0].id


async def _outbox(seed: Seeder) -> WebhookDelivery:
    async with seed.sessions() as session:
        return (await session.exec(select(WebhookDelivery))).one()


async def test_failing_receiver_gets_the_alert_exactly_once_after_retries(
    seed: Seeder, tmp_path: Path, receiver: Receiver
) -> None:
    context = _context(seed, tmp_path, receiver.url)
    alert_id = await _fire_one_alert(seed, context.settings.billing)
    before = _deliveries()
    stop = asyncio.Event()
    loop = asyncio.create_task(run_webhook_loop(context, stop))
    try:
        deadline = time.monotonic() + 20
        while not receiver.accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # further passes must not post it again
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
    assert [status for status, _ in receiver.posts] == [500, 500, 200]
    after = _deliveries()
    assert {o: after[o] - before[o] for o in after} == {"delivered": 1, "failed": 2, "gave_up": 0}
    body = receiver.accepted[0]
    assert body["text"] == "100% of the daily budget of team 'acme' reached: $12.50 of $10.00 spent (hard limit)."
    assert body["alert"]["id"] == alert_id and body["alert"]["kind"] == "budget_threshold"
    assert body["alert"]["spent_usd"] == 12.5 and body["alert"]["limit_usd"] == 10.0
    row = await _outbox(seed)
    assert (row.state, row.attempts, row.last_error) == ("delivered", 3, None)
    assert row.delivered_at is not None
    assert await deliver_due(context) == 0
    await context.close()


@pytest.mark.parametrize("receiver", [1000], indirect=True)
async def test_gives_up_after_max_attempts_and_records_it(seed: Seeder, tmp_path: Path, receiver: Receiver) -> None:
    context = _context(seed, tmp_path, receiver.url, webhook_max_attempts=3)
    await _fire_one_alert(seed, context.settings.billing)
    before = _deliveries()
    for _ in range(40):
        await deliver_due(context)
        if (await _outbox(seed)).state != "pending":
            break
        await asyncio.sleep(0.05)
    row = await _outbox(seed)
    assert (row.state, row.attempts, row.last_error) == ("failed", 3, "HTTP 500")
    assert row.delivered_at is None and len(receiver.posts) == 3
    assert "secret-token" not in (row.last_error or "")
    after = _deliveries()
    assert {o: after[o] - before[o] for o in after} == {"delivered": 0, "failed": 2, "gave_up": 1}
    await context.close()


async def test_unreachable_receiver_is_retried_with_backoff(seed: Seeder, tmp_path: Path) -> None:
    context = _context(seed, tmp_path, f"http://127.0.0.1:{free_port()}/hook", webhook_backoff_s=30.0)
    await _fire_one_alert(seed, context.settings.billing)
    assert await deliver_due(context) == 0
    row = await _outbox(seed)
    assert row.state == "pending" and row.attempts == 1 and row.last_error == "ConnectError: request failed"
    assert row.next_attempt_at > time.time() + 25  # the next try waits for the backoff
    assert await deliver_due(context) == 0
    assert (await _outbox(seed)).attempts == 1
    await context.close()


async def test_without_a_webhook_url_alerts_are_stored_only(seed: Seeder, tmp_path: Path) -> None:
    context = _context(seed, tmp_path, None)
    await _fire_one_alert(seed, context.settings.billing)
    assert await deliver_due(context) == 0
    async with seed.sessions() as session:
        assert (await session.exec(select(WebhookDelivery))).all() == []
    await context.close()
