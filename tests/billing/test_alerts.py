"""Billing alerts: each budget threshold fires once per period, anomalies once per batch, webhooks queued."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from sqlmodel import select

from gateway.billing.alerts import after_spend, count_fired
from gateway.billing.budgets import set_budget
from gateway.db.models import BillingAlert, WebhookDelivery
from gateway.settings import BillingSettings
from tests.billing.conftest import Seeder

WEBHOOK = BillingSettings(webhook_url="http://127.0.0.1:9/hook")


def _fired(kind: str) -> float:
    return REGISTRY.get_sample_value("batchgw_alerts_fired_total", {"kind": kind}) or 0.0


async def _alerts(seed: Seeder) -> list[BillingAlert]:
    async with seed.sessions() as session:
        return list((await session.exec(select(BillingAlert).order_by(BillingAlert.id))).all())  # type: ignore[arg-type]


async def _spend_and_check(seed: Seeder, team: str, batch: str, cost: float) -> list[float]:
    await seed.spend(team, batch, cost)
    async with seed.sessions() as session:
        fired = await after_spend(session, team, batch, WEBHOOK)
        await session.commit()
    count_fired(fired)
    return [alert.threshold or 0.0 for alert in fired]


async def test_each_threshold_fires_once(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await seed.batch(acme)
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 10.0, False, [0.5, 0.8, 1.0])
        await session.commit()
    before = _fired("budget_threshold")
    assert await _spend_and_check(seed, acme, batch, 4.0) == []
    assert await _spend_and_check(seed, acme, batch, 1.0) == [0.5]  # exactly 50%
    assert await _spend_and_check(seed, acme, batch, 0.5) == []
    assert await _spend_and_check(seed, acme, batch, 5.0) == [0.8, 1.0]  # 10.5: both crossed at once
    assert await _spend_and_check(seed, acme, batch, 3.0) == []
    alerts = await _alerts(seed)
    assert [(a.kind, a.threshold) for a in alerts] == [("budget_threshold", t) for t in (0.5, 0.8, 1.0)]
    assert alerts[0].message == "50% of the daily budget of team 'acme' reached: $5.00 of $10.00 spent."
    assert alerts[2].spent_usd == 10.5 and alerts[2].limit_usd == 10.0 and alerts[2].team_id == acme
    assert _fired("budget_threshold") - before == 3
    async with seed.sessions() as session:
        outbox = (await session.exec(select(WebhookDelivery))).all()
    assert sorted(row.alert_id for row in outbox) == [a.id for a in alerts]
    assert {row.state for row in outbox} == {"pending"}


async def test_raising_the_limit_arms_thresholds_again(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await seed.batch(acme)
    async with seed.sessions() as session:
        await set_budget(session, acme, "month", 10.0, True, [1.0])
        await session.commit()
    assert await _spend_and_check(seed, acme, batch, 10.0) == [1.0]
    async with seed.sessions() as session:
        await set_budget(session, acme, "month", 20.0, True, [1.0])
        await session.commit()
    assert await _spend_and_check(seed, acme, batch, 5.0) == []
    assert await _spend_and_check(seed, acme, batch, 5.0) == [1.0]
    assert [a.limit_usd for a in await _alerts(seed)] == [10.0, 20.0]


async def test_global_budget_alerts_on_spend_of_any_team_and_no_webhook_when_unset(seed: Seeder) -> None:
    acme = await seed.team("acme")
    other = await seed.team("other")
    async with seed.sessions() as session:
        await set_budget(session, None, "day", 10.0, False, [0.8])
        await session.commit()
    await seed.spend(acme, await seed.batch(acme), 5.0)
    other_batch = await seed.batch(other)
    await seed.spend(other, other_batch, 3.0)
    async with seed.sessions() as session:
        fired = await after_spend(session, other, other_batch, BillingSettings())
        await session.commit()
    assert [a.message for a in fired] == ["80% of the daily global budget reached: $8.00 of $10.00 spent."]
    async with seed.sessions() as session:
        assert (await session.exec(select(WebhookDelivery))).all() == []


async def test_anomaly_fires_once_when_cost_per_request_runs_far_above_estimate(seed: Seeder) -> None:
    acme = await seed.team("acme")
    settings = BillingSettings(anomaly_factor=3.0, anomaly_min_requests=20)
    batch = await seed.batch(acme, estimated=1.0, request_total=100)  # $0.01 per request estimated
    before = _fired("anomaly")

    async def check(cost: float, requests: int) -> list[str]:
        await seed.spend(acme, batch, cost, requests=requests)
        async with seed.sessions() as session:
            fired = await after_spend(session, acme, batch, settings)
            await session.commit()
        count_fired(fired)
        return [a.kind for a in fired]

    assert await check(0.5, 10) == []  # $0.05 per request, but only 10 finished: too few to judge
    assert await check(0.0, 10) == []  # 20 finished, $0.025 per request: under 3x
    assert await check(0.5, 10) == ["anomaly"]  # 30 finished, $0.0333 per request: 3.3x
    assert await check(1.0, 10) == []  # still anomalous, already reported
    alerts = await _alerts(seed)
    assert [a.message for a in alerts] == [
        f"Batch {batch} of team 'acme' costs $0.0333 per request, 3.3x its estimate of $0.0100 "
        "(30 requests finished, $1.00 spent)."
    ]
    assert alerts[0].batch_id == batch and alerts[0].threshold == 3.0
    assert _fired("anomaly") - before == 1


async def test_no_anomaly_without_an_estimate(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batch = await seed.batch(acme, estimated=None)
    await seed.spend(acme, batch, 100.0, requests=100)
    async with seed.sessions() as session:
        assert await after_spend(session, acme, batch, BillingSettings(anomaly_min_requests=1)) == []


async def test_concurrent_spend_fires_each_alert_once(seed: Seeder) -> None:
    acme = await seed.team("acme")
    batches = [await seed.batch(acme), await seed.batch(acme)]
    async with seed.sessions() as session:
        await set_budget(session, acme, "day", 10.0, False, [0.5])
        await session.commit()
    await seed.spend(acme, batches[0], 6.0)

    async def collect(batch_id: str, hold_s: float) -> int:
        async with seed.sessions() as session:
            fired = await after_spend(session, acme, batch_id, WEBHOOK)
            await asyncio.sleep(hold_s)  # the other transaction evaluates the same threshold meanwhile
            await session.commit()
            return len(fired)

    counts = await asyncio.gather(collect(batches[0], 0.3), collect(batches[1], 0.0))
    assert sorted(counts) == [0, 1]
    assert len(await _alerts(seed)) == 1
