"""Provider health: a circuit breaker per provider, shared through the database, and the state
policies see (circuit, in-flight load, limits, observed turnaround).

Consecutive failed calls (errors and timeouts of submit and poll) open a provider's circuit. While it
is open no new work goes there. After ``circuit_cooldown_s`` one probe (the adapter's cheap health
call, made by whichever worker claims it first) decides: success closes the circuit, failure opens
it for another cool-down.
"""

from __future__ import annotations

import logging
import statistics
import time

from gateway.billing import alerts
from gateway.db import routing as routing_db
from gateway.db import shards as shard_db
from gateway.db.unit_of_work import reading, transaction
from gateway.providers.base import ProviderRateLimited
from gateway.routing.needs import RoutingNeeds
from router_policies.base import ProviderState

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0


async def call_failed(context: RoutingNeeds, provider: str, error: Exception | str) -> bool:
    """Record a failed call to ``provider``; True if it opened the circuit.

    A 429 is not a failure here: the provider is up and asks for patience, which the caller gives.
    """
    if isinstance(error, ProviderRateLimited):
        return False
    async with transaction(context.sessions) as session:
        row, opened = await routing_db.record_failure(
            session, provider, str(error), context.settings.routing.circuit_failure_threshold
        )
    if opened:
        log.warning("provider %s: circuit open after %d failures: %s", provider, row.consecutive_failures, error)
    return opened


async def auth_failed(context: RoutingNeeds, provider: str, error: Exception) -> None:
    """The provider refused the gateway's key: open its circuit at once with reason "authentication failed" and
    raise an alert (once per opening). Probes keep failing until the key is fixed and the gateway restarted."""
    reason = f"authentication failed: {error}"
    async with transaction(context.sessions) as session:
        opened = await routing_db.force_open(session, provider, reason)
        alert = None
        if opened:
            billing = context.settings.billing
            alert = await alerts.provider_auth_failed(session, provider, str(error), time.time(), billing)
    if opened:
        log.error("provider %s: circuit open: %s", provider, reason)
    if alert is not None:
        alerts.count_fired([alert])


async def call_succeeded(context: RoutingNeeds, provider: str) -> None:
    """Record a successful call to ``provider`` (closes its circuit). A provider whose circuit was open is back: the
    shards waiting for it to answer again are due at once, not at the end of their own back-off."""
    woken = 0
    async with transaction(context.sessions) as session:
        found = await routing_db.record_success(session, provider)
        if found == "closed":
            woken = await shard_db.wake_waiting_on(session, provider)
    if found != "healthy":
        log.info(
            "provider %s: healthy again (circuit closed, failures reset)%s",
            provider, f"; {woken} shards waiting for it are due now" if woken else "",
        )  # fmt: skip
    if woken:
        context.work_available.set()


async def circuit_of(context: RoutingNeeds, provider: str) -> str:
    """``closed``, ``open`` or ``half_open`` (no row yet means closed)."""
    async with reading(context.sessions) as session:
        rows = await routing_db.health_rows(session)
    row = rows.get(provider)
    return row.circuit if row is not None else "closed"


async def last_error(context: RoutingNeeds, provider: str) -> str:
    """The last failure recorded for a provider (empty when none)."""
    async with reading(context.sessions) as session:
        row = (await routing_db.health_rows(session)).get(provider)
    return row.last_error or "" if row is not None else ""


async def probe_open_circuits(context: RoutingNeeds) -> None:
    """Probe each provider whose circuit cooled down; the first worker to claim a probe runs it."""
    settings = context.settings.routing
    async with reading(context.sessions) as session:
        rows = await routing_db.health_rows(session)
    for name, row in rows.items():
        if row.circuit == "closed" or name not in context.providers:
            continue
        async with transaction(context.sessions) as session:
            claimed = await routing_db.claim_probe(session, name, settings.circuit_cooldown_s, PROBE_TIMEOUT_S)
        if not claimed:
            continue
        report = await context.providers.get(name).health()
        if report.healthy:
            await call_succeeded(context, name)
        else:
            await call_failed(context, name, f"health probe failed: {report.detail}")


async def provider_states(context: RoutingNeeds) -> dict[str, ProviderState]:
    """What the policies see of every enabled provider right now."""
    per_model = context.settings.routing.turnaround_samples
    async with reading(context.sessions) as session:
        rows = await routing_db.health_rows(session)
        samples = await routing_db.turnaround_samples(session, per_model)
        in_flight = await shard_db.in_flight_by_provider(session)
    states: dict[str, ProviderState] = {}
    for adapter in context.providers:
        name = adapter.name
        row = rows.get(name)
        circuit = row.circuit if row is not None else "closed"
        limits = adapter.config.limits
        p50, p90 = {}, {}
        for (provider, provider_model), values in samples.items():
            if provider == name and values:
                p50[provider_model], p90[provider_model] = percentile(values, 50), percentile(values, 90)
        states[name] = ProviderState(
            provider=name,
            healthy=circuit != "open",
            circuit=circuit,  # type: ignore[arg-type]
            in_flight=in_flight.get(name, 0),
            max_in_flight=limits.max_batches_in_flight,
            turnaround_p50_s=p50,
            turnaround_p90_s=p90,
            requests_per_minute=limits.requests_per_minute if adapter.executes_locally else None,
            tokens_per_minute=limits.tokens_per_minute if adapter.executes_locally else None,
            max_requests_per_batch=limits.max_requests_per_batch,
        )
    return states


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile (inclusive method; one value is its own percentile)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
