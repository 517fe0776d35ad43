"""Every Prometheus metric of the gateway, defined here and nowhere else.

Two kinds of metric:

* **Events** (counters, histograms) live in the process that saw the event and are counted once
  there; with several gateway processes, Prometheus sums them across its scrape targets.
* **State** (gauges such as batches by status, budget use, circuit state) is computed from the
  shared database when ``/metrics`` is scraped, so every process reports the same, correct values.
  :func:`render` joins the process's counters with such a :class:`~gateway.db.stats.MetricsSnapshot`.

Label values are short, bounded vocabularies (provider and model names from configuration, team
names, outcome and cause codes): never ids, messages or anything secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.db.stats import BATCH_STATUSES, CIRCUIT_STATES, HOLD_REASONS, SHARD_STATES, MetricsSnapshot

disable_created_metrics()  # no *_created series: they double the exposition and no rule or panel reads them

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The text exposition format's content type (``text/plain; version=0.0.4; charset=utf-8``)."""

TURNAROUND_BUCKETS = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 259200, 604800,
)  # fmt: skip
"""Seconds: from one second to a week, the longest completion window a batch may have."""

REQUEST_OUTCOMES = ("succeeded", "failed", "expired", "cancelled")
"""Values of the ``outcome`` label of :data:`REQUESTS`: each request's final outcome, counted once."""

ALERT_KINDS = ("budget_threshold", "anomaly", "canary", "budget_stop", "provider_auth_failed")
"""Values of the ``kind`` label of :data:`ALERTS_FIRED`."""

WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")
"""Values of the ``outcome`` label of :data:`WEBHOOK_DELIVERIES`."""

# --- events ------------------------------------------------------------------------------------------------

SPEND_USD = Counter(
    "batchgw_spend_usd",
    "Spend in USD recorded in the ledger, at the price of the offer that ran the requests "
    "(reason 'served': collected answers; 'abandoned': what a provider batch the gateway moved work off billed; "
    "'unread': what a provider batch billed for answers the gateway could not read).",
    ["provider", "model", "team", "reason"],
)
SAVINGS_USD = Counter(
    "batchgw_savings_usd",
    "USD saved against the same tokens at the cheapest synchronous list price of the model (positive part).",
    ["provider", "model", "team"],
)
SYNC_BASELINE_USD = Counter(
    "batchgw_sync_baseline_usd",
    "What the answered tokens would have cost at the cheapest synchronous list price of the model.",
    ["provider", "model", "team"],
)
REQUESTS = Counter(
    "batchgw_requests",
    "Requests finished by provider and final outcome (succeeded, failed, expired, cancelled); each request once.",
    ["provider", "outcome"],
)
REQUEST_RETRIES = Counter(
    "batchgw_request_retries",
    "Requests handed from a provider to a follow-up shard to be tried again (retry or failover); their final "
    "outcome is counted in batchgw_requests_total.",
    ["provider"],
)
TOKENS = Counter(
    "batchgw_tokens",
    "Tokens reported by providers, by direction (input, output).",
    ["provider", "model", "direction"],
)
FAILOVERS = Counter(
    "batchgw_failovers",
    "Work moved from one provider to another (to_provider 'none' when no provider could take it).",
    ["from_provider", "to_provider", "cause"],
)
PROVIDER_WEBHOOKS = Counter(
    "batchgw_provider_webhooks",
    "Webhook deliveries from providers, by outcome: 'polled' (a waiting batch is polled at once), 'ignored' "
    "(another event type, or a batch nothing waits for) or 'refused' (failed verification, or no event).",
    ["provider", "outcome"],
)
ALERTS_FIRED = Counter(
    "batchgw_alerts_fired",
    "Alerts created, by kind (budget_threshold, anomaly, canary, budget_stop, provider_auth_failed).",
    ["kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "batchgw_alert_webhook_deliveries",
    "Attempts to post an alert to the webhook, by outcome (delivered; failed: retried later; gave_up: last attempt "
    "failed, the alert was not delivered).",
    ["outcome"],
)
BATCH_EVENT_DELIVERIES = Counter(
    "batchgw_batch_webhook_deliveries",
    "Attempts to post a batch event to a team's webhook endpoint, by outcome (delivered; failed: retried later; "
    "gave_up: not delivered within events.give_up_after_s).",
    ["outcome"],
)
SHARD_TURNAROUND = Histogram(
    "batchgw_shard_turnaround_seconds",
    "Time from a shard's submission to the provider to its results being collected.",
    ["provider"],
    buckets=TURNAROUND_BUCKETS,
)
BATCH_TURNAROUND = Histogram(
    "batchgw_batch_turnaround_seconds",
    "Time from a batch's creation to its end (completed, failed, expired or cancelled).",
    ["provider"],
    buckets=TURNAROUND_BUCKETS,
)
HTTP_REQUEST_SECONDS = Histogram(
    "batchgw_http_request_duration_seconds",
    "API requests answered by this process, from arrival to the response's last byte, by route template, "
    "method and status class (2xx, 4xx, 5xx); _count counts the requests.",
    ["route", "method", "status_class"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

for _kind in ALERT_KINDS:
    ALERTS_FIRED.labels(kind=_kind)  # exported at 0 from the start, so increase() sees the first alert
for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)
    BATCH_EVENT_DELIVERIES.labels(outcome=_outcome)


def prime(providers: Iterable[str]) -> None:
    """Export each provider's request counters at 0 before its first request, so rates see every increment."""
    for provider in providers:
        for outcome in REQUEST_OUTCOMES:
            REQUESTS.labels(provider=provider, outcome=outcome)
        REQUEST_RETRIES.labels(provider=provider)


# --- state read from the database at scrape time -----------------------------------------------------------

GAUGES: dict[str, str] = {
    "batchgw_batches": "Batches by status.",
    "batchgw_shards": "Shards (provider batches or fan-out runs) by state and provider.",
    "batchgw_provider_up": "1 unless the provider's circuit breaker is open.",
    "batchgw_provider_circuit_state": "1 for the provider's current circuit state (closed, open, half_open), else 0.",
    "batchgw_budget_limit_usd": "Limit of each budget in USD.",
    "batchgw_budget_spent_usd": "Spend in USD counted against each budget in its current period.",
    "batchgw_budget_reserved_usd": "What unfinished batches under each budget are still expected to spend, in USD.",
    "batchgw_budget_remaining_usd": "Limit minus spent minus reserved (never below 0), in USD.",
    "batchgw_budget_utilization_ratio": "Spend in the current period divided by the budget's limit.",
    "batchgw_batches_held": "Unfinished batches held for an operator (reason 'canary') or stopped for a budget.",
    "batchgw_oldest_queued_shard_age_seconds": "Age of the oldest shard waiting to be submitted (0 when none).",
    "batchgw_batches_past_window": "Unfinished batches whose completion window has passed.",
    "batchgw_database_up": "1 when the scrape could read the database, else 0 (the state gauges are then absent).",
}
"""Name and help of every gauge :class:`SnapshotCollector` yields."""


def _add(counter: Counter, amount: float, **labels: str) -> None:
    if amount > 0:
        counter.labels(**labels).inc(amount)
    else:
        counter.labels(**labels)  # the series exists (at 0) so that rate() and ratios see it


def record_http_request(*, route: str, method: str, status: int, seconds: float) -> None:
    """One API request: ``route`` is its template (``/v1/files/{file_id}``), never a path with ids in it."""
    HTTP_REQUEST_SECONDS.labels(route=route, method=method, status_class=f"{status // 100}xx").observe(seconds)


def record_shard_collected(
    *,
    provider: str,
    model: str,
    team: str,
    succeeded: int,
    failed: int,
    expired: int,
    cancelled: int,
    retried: int,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
    list_cost_usd: float,
    turnaround_s: float | None,
) -> None:
    """Count a collected shard once, after the transaction that wrote its ledger row committed.

    ``team`` is the team's name; ``retried`` counts requests handed to a follow-up shard (in their own series:
    their final outcome is counted when a shard finally answers them).
    """
    for outcome, count in zip(REQUEST_OUTCOMES, (succeeded, failed, expired, cancelled), strict=True):
        _add(REQUESTS, count, provider=provider, outcome=outcome)
    _add(REQUEST_RETRIES, retried, provider=provider)
    _add(TOKENS, input_tokens, provider=provider, model=model, direction="input")
    _add(TOKENS, output_tokens, provider=provider, model=model, direction="output")
    _add(SPEND_USD, cost_usd, provider=provider, model=model, team=team, reason="served")
    _add(SAVINGS_USD, list_cost_usd - cost_usd, provider=provider, model=model, team=team)
    _add(SYNC_BASELINE_USD, list_cost_usd, provider=provider, model=model, team=team)
    if turnaround_s is not None:
        SHARD_TURNAROUND.labels(provider=provider).observe(max(0.0, turnaround_s))


def record_abandoned_spend(*, provider: str, model: str, team: str, cost_usd: float) -> None:
    """Count what an abandoned provider batch billed, once its ledger row committed."""
    _add(SPEND_USD, cost_usd, provider=provider, model=model, team=team, reason="abandoned")


def record_unread_spend(*, provider: str, model: str, team: str, cost_usd: float) -> None:
    """Count what a provider batch billed for answers the gateway could not read, once its ledger row committed."""
    _add(SPEND_USD, cost_usd, provider=provider, model=model, team=team, reason="unread")


def record_provider_webhook(provider: str, outcome: str) -> None:
    """Count one webhook delivery of ``provider`` (``polled``, ``ignored`` or ``refused``)."""
    PROVIDER_WEBHOOKS.labels(provider=provider, outcome=outcome).inc()


def record_failover(from_provider: str, to_provider: str | None, cause: str) -> None:
    """Count work moved off ``from_provider``; ``cause`` is a short code (e.g. 'provider_down', 'expired')."""
    FAILOVERS.labels(from_provider=from_provider, to_provider=to_provider or "none", cause=cause).inc()


def record_batch_finished(provider: str, turnaround_s: float) -> None:
    """Observe a batch's turnaround once it ended (``provider``: the one that served most of it)."""
    BATCH_TURNAROUND.labels(provider=provider).observe(max(0.0, turnaround_s))


def record_alert_fired(kind: str) -> None:
    """Count one new alert of ``kind`` (see :data:`ALERT_KINDS`)."""
    ALERTS_FIRED.labels(kind=kind).inc()


def record_batch_event_attempt(outcome: str) -> None:
    """One POST of a batch event: ``delivered``, ``failed`` (retried) or ``gave_up``."""
    BATCH_EVENT_DELIVERIES.labels(outcome=outcome).inc()


def record_webhook_attempt(outcome: str) -> None:
    """Count one attempt to post an alert: ``delivered``, ``failed`` (retried later) or ``gave_up``."""
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


# --- exposition --------------------------------------------------------------------------------------------


class SnapshotCollector(Collector):
    """Gauges of one database snapshot (``None``: the database could not be read)."""

    def __init__(self, snapshot: MetricsSnapshot | None, providers: Iterable[str] = ()) -> None:
        self.snapshot = snapshot
        self.providers = sorted(set(providers))

    def collect(self) -> Iterator[Metric]:
        """Yield ``batchgw_database_up`` and, when the snapshot exists, every state gauge."""
        up = GaugeMetricFamily("batchgw_database_up", GAUGES["batchgw_database_up"])
        up.add_metric([], 0 if self.snapshot is None else 1)
        yield up
        if self.snapshot is not None:
            yield from self._state(self.snapshot)

    def _state(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        providers = sorted(set(self.providers) | set(snap.circuits) | {p for _, p in snap.shards})

        batches = _gauge("batchgw_batches", ["status"])
        for status in sorted(set(BATCH_STATUSES) | set(snap.batches)):
            batches.add_metric([status], snap.batches.get(status, 0))
        yield batches

        shards = _gauge("batchgw_shards", ["state", "provider"])
        for provider in providers:
            for state in sorted(set(SHARD_STATES) | {s for s, p in snap.shards if p == provider}):
                shards.add_metric([state, provider], snap.shards.get((state, provider), 0))
        yield shards

        up = _gauge("batchgw_provider_up", ["provider"])
        circuit = _gauge("batchgw_provider_circuit_state", ["provider", "state"])
        for provider in providers:
            current = snap.circuits.get(provider, "closed")
            up.add_metric([provider], 0 if current == "open" else 1)
            for state in sorted(set(CIRCUIT_STATES) | {current}):
                circuit.add_metric([provider, state], 1 if state == current else 0)
        yield up
        yield circuit

        budget_labels = ["scope", "period", "hard"]
        limit = _gauge("batchgw_budget_limit_usd", budget_labels)
        spent = _gauge("batchgw_budget_spent_usd", budget_labels)
        reserved = _gauge("batchgw_budget_reserved_usd", budget_labels)
        remaining = _gauge("batchgw_budget_remaining_usd", budget_labels)
        ratio = _gauge("batchgw_budget_utilization_ratio", budget_labels)
        for budget in snap.budgets:
            labels = [budget.scope, budget.period, "true" if budget.hard else "false"]
            limit.add_metric(labels, budget.limit_usd)
            spent.add_metric(labels, budget.spent_usd)
            reserved.add_metric(labels, budget.reserved_usd)
            remaining.add_metric(labels, max(0.0, budget.limit_usd - budget.spent_usd - budget.reserved_usd))
            ratio.add_metric(labels, budget.utilization)
        yield from (limit, spent, reserved, remaining, ratio)

        held = _gauge("batchgw_batches_held", ["reason"])
        for reason in sorted(set(HOLD_REASONS) | set(snap.held_batches)):
            held.add_metric([reason], snap.held_batches.get(reason, 0))
        yield held

        oldest = _gauge("batchgw_oldest_queued_shard_age_seconds", [])
        oldest.add_metric([], snap.oldest_queued_shard_age_s)
        yield oldest

        past = _gauge("batchgw_batches_past_window", [])
        past.add_metric([], snap.batches_past_window)
        yield past


def _gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, GAUGES[name], labels=labels)


class _Joined(Collector):
    """Several collectors seen as one (so one registry renders the process's and the snapshot's metrics)."""

    def __init__(self, *collectors: Collector | CollectorRegistry) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def render(snapshot: MetricsSnapshot | None, providers: Iterable[str] = ()) -> bytes:
    """The text exposition of this process's metrics plus the snapshot's gauges."""
    providers = list(providers)
    prime(providers)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Joined(REGISTRY, SnapshotCollector(snapshot, providers)))
    return generate_latest(registry)


def serve_process_metrics(host: str, port: int) -> None:
    """Serve this process's counters and histograms at ``http://host:port/metrics`` from a daemon thread.

    For ``batchgw worker`` processes, which record events but have no API: state gauges are left to the
    API processes, which read them from the database.
    """
    start_http_server(port, addr=host)


def metric_names() -> set[str]:
    """Every metric family name this module defines (counters without their ``_total`` suffix)."""
    events = (
        SPEND_USD,
        SAVINGS_USD,
        SYNC_BASELINE_USD,
        REQUESTS,
        REQUEST_RETRIES,
        WEBHOOK_DELIVERIES,
        BATCH_EVENT_DELIVERIES,
        TOKENS,
        FAILOVERS,
        PROVIDER_WEBHOOKS,
        ALERTS_FIRED,
        SHARD_TURNAROUND,
        BATCH_TURNAROUND,
        HTTP_REQUEST_SECONDS,
    )
    return set(GAUGES) | {family.name for metric in events for family in metric.describe()}
