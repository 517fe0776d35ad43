"""SQLModel tables: the durable state of the gateway.

Kept in one module although it is long: it is one concern, the one schema the migrations describe, and
importing it registers every table with the metadata at once.

Every change of state is written here before it has effects outside (a provider call, a file
written for a client), so any worker can pick up any job after a crash.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """A random public id such as ``file-3fJ...``; the prefix says what it names."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now_s() -> int:
    """Current Unix time in whole seconds (the API's timestamp unit)."""
    return int(time.time())


class Team(SQLModel, table=True):
    """A tenant: its keys see only its own files and batches."""

    __tablename__ = "teams"

    id: str = Field(default_factory=lambda: new_id("team_", 16), primary_key=True, max_length=64)
    name: str = Field(index=True, unique=True, max_length=200)
    created_at: int = Field(default_factory=now_s)


class ApiKey(SQLModel, table=True):
    """A client key. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: str = Field(default_factory=lambda: new_id("key_", 16), primary_key=True, max_length=64)
    team_id: str = Field(foreign_key="teams.id", index=True, max_length=64)
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16, description="First characters of the key, for display.")
    name: str | None = Field(default=None, max_length=200)
    created_at: int = Field(default_factory=now_s)
    revoked_at: int | None = None
    expires_at: int | None = Field(default=None, description="When the key stops working (unix seconds), if ever.")
    last_used_at: int | None = Field(default=None, description="Last authenticated request, to the minute.")


DEFAULT_FILE_TTL_S = 30 * 24 * 3600
"""How long a batch file is kept when nothing says otherwise (OpenAI's 30 days, for inputs and results alike)."""


HELD_BY_MESSAGE_BATCH = "message_batch"
"""``files.held_by`` of a message batch's request and result files."""


class StoredFile(SQLModel, table=True):
    """A file as the OpenAI Files API shows it; the bytes live in the blob store."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_team_seq", "team_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(default_factory=lambda: new_id("file-"), unique=True, max_length=64)
    team_id: str = Field(foreign_key="teams.id", max_length=64)
    filename: str = Field(max_length=1024)
    purpose: str = Field(max_length=32)
    bytes: int = Field(default=0, sa_type=BigInteger)
    created_at: int = Field(default_factory=now_s)
    expires_at: int | None = None
    status: str = Field(default="processed", max_length=16)
    status_details: str | None = Field(default=None, sa_type=Text)
    storage_key: str = Field(max_length=256)
    line_count: int | None = None
    deleted: bool = Field(default=False)
    line_check: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON),
        description="What checking the lines while they uploaded found, for a file with no problem "
        "(gateway.pipeline.input_lines.UploadCheck); its batches then skip reading it again.",
    )
    held_by: str | None = Field(
        default=None,
        max_length=32,
        description="``message_batch``: the requests or results of a message batch, kept for it. The Files API "
        "neither lists nor deletes such a file (its message batch's delete does).",
    )


class Batch(SQLModel, table=True):
    """A client batch, with OpenAI's fields plus the engine's bookkeeping."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_team_seq", "team_id", "seq"),
        Index("ix_batches_stage_lease", "stage", "lease_expires_at"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(default_factory=lambda: new_id("batch_"), unique=True, max_length=64)
    team_id: str = Field(foreign_key="teams.id", max_length=64)
    api_key_id: str | None = Field(default=None, max_length=64)
    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=64)
    completion_window: str = Field(max_length=16)
    metadata_: dict[str, str] | None = Field(default=None, sa_column=Column("metadata", JSON))
    model: str | None = Field(default=None, max_length=256)
    status: str = Field(default="validating", max_length=16)
    errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    created_at: int = Field(default_factory=now_s)
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = Field(default=None, max_length=64)
    error_file_id: str | None = Field(default=None, max_length=64)
    output_ttl_s: int | None = Field(
        default=None, description="Seconds its output and error files are kept (output_expires_after; None: 30 days)."
    )
    deleted_at: int | None = Field(
        default=None, description="When its client deleted it (Message Batches): its team no longer sees it."
    )
    request_total: int = 0
    request_completed: int = 0
    request_failed: int = 0
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cached_tokens: int = Field(default=0, sa_type=BigInteger)
    reasoning_tokens: int = Field(default=0, sa_type=BigInteger)
    policy: str | None = Field(default=None, max_length=64, description="The routing policy that placed the batch.")
    estimated_cost_usd: float | None = Field(default=None, description="Projected cost when routed (the reservation).")
    projected_cost_usd: float | None = Field(
        default=None,
        description="What the batch is now expected to cost in all: max(estimate, spent + projection of the rest).",
    )
    cost_usd: float = Field(default=0.0, description="Spend recorded in the ledger so far.")
    abandoned_cost_usd: float = Field(
        default=0.0,
        description="Of which paid twice: billed by provider batches the gateway moved work off, or billed for "
        "answers it could not read and ran again.",
    )
    list_cost_usd: float = Field(default=0.0, description="What the same tokens cost at synchronous list prices.")
    providers: str | None = Field(default=None, max_length=1024, description="Providers that ran its shards.")
    hold_reason: str | None = Field(
        default=None,
        max_length=32,
        description="'canary': held for an operator after its canary; 'budget': stopped to hold a hard budget.",
    )
    hold_detail: str | None = Field(default=None, sa_type=Text, description="Why, with the figures.")
    canary_projected_usd: float | None = Field(default=None, description="The full job's cost its canary projected.")
    # Engine bookkeeping: which pipeline stage owns the batch next, and who holds it now.
    stage: str = Field(default="validate", max_length=16)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = None
    lease_token: int = Field(default=0, description="Fencing token: grows with every claim of the row.")
    next_action_at: float = Field(default=0.0, description="The batch stage is not claimed before this time.")
    stage_attempts: int = Field(default=0, description="Failed attempts of the current stage.")
    attempt_log: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON), description="Recent failed attempts: time, stage, error class, message."
    )
    updated_at: float = Field(default_factory=time.time)


class Shard(SQLModel, table=True):
    """One provider batch (or one fan-out run): a slice of a client batch sent to one provider."""

    __tablename__ = "shards"
    __table_args__ = (
        UniqueConstraint("batch_id", "seq"),
        Index("ix_shards_state_due", "state", "next_action_at"),
        Index("ix_shards_provider_state", "provider", "state"),
    )

    id: str = Field(default_factory=lambda: new_id("shard_", 20), primary_key=True, max_length=64)
    batch_id: str = Field(foreign_key="batches.id", index=True, max_length=64)
    seq: int
    provider: str = Field(max_length=128)
    model: str = Field(max_length=256, description="The model name the client asked for.")
    provider_model: str = Field(max_length=256)
    mode: str = Field(
        default="batch",
        max_length=8,
        description="'batch' (provider batch), 'sync' (fan-out), 'flex' or 'priority' (fan-out at that tier).",
    )
    parent_id: str | None = Field(
        default=None, max_length=64, description="Shard whose unfinished requests this carries."
    )
    generation: int = Field(default=0, description="How many times this shard's requests were tried before.")
    pinned: bool = Field(default=False, description="The client pinned the provider: never moved elsewhere.")
    canary: bool = Field(default=False, description="Runs first; the batch's other shards wait in state 'held'.")
    state: str = Field(default="queued", max_length=16)
    end_reason: str | None = Field(default=None, max_length=16)
    request_count: int = 0
    byte_size: int = Field(default=0, sa_type=BigInteger)
    estimated_input_tokens: int = Field(default=0, sa_type=BigInteger)
    input_key: str = Field(max_length=256)
    submit_token: str = Field(default_factory=lambda: new_id("", 32), max_length=64)
    provider_file_id: str | None = Field(default=None, max_length=256)
    provider_batch_id: str | None = Field(default=None, max_length=256)
    provider_status: str | None = Field(default=None, max_length=64)
    progress_completed: int = 0
    progress_failed: int = 0
    result_completed: int = 0
    result_failed: int = 0
    result_moved: int = Field(default=0, description="Requests handed to a follow-up shard (retry or failover).")
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cached_tokens: int = Field(default=0, sa_type=BigInteger)
    cache_write_tokens: int = Field(default=0, sa_type=BigInteger)
    reasoning_tokens: int = Field(default=0, sa_type=BigInteger)
    estimated_output_tokens: int = Field(default=0, sa_type=BigInteger)
    input_per_mtok: float = Field(default=0.0, description="USD per MTok input at the rate this shard pays.")
    output_per_mtok: float = Field(default=0.0, description="USD per MTok output at the rate this shard pays.")
    cached_input_per_mtok: float | None = Field(
        default=None, description="USD per MTok of cached input (cache reads); None: the input rate."
    )
    cache_write_per_mtok: float | None = Field(
        default=None, description="USD per MTok of input written to a prompt cache; None: the input rate."
    )
    list_input_per_mtok: float = Field(default=0.0, description="Synchronous list price, for savings.")
    list_output_per_mtok: float = Field(default=0.0, description="Synchronous list price, for savings.")
    estimated_cost_usd: float = 0.0
    output_key: str | None = Field(default=None, max_length=256)
    error_key: str | None = Field(default=None, max_length=256)
    attempts: int = 0
    poll_delay_s: float = 0.0
    next_action_at: float = Field(default_factory=time.time)
    last_error: str | None = Field(default=None, sa_type=Text)
    wait_code: str | None = Field(default=None, max_length=32, description="Why the shard is not progressing now.")
    wait_detail: str | None = Field(default=None, sa_type=Text, description="The same, in words, with times.")
    stage_attempts: int = Field(default=0, description="Failed attempts of the current step (unexpected errors).")
    attempt_log: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON), description="Recent failed attempts: time, state, error class, message."
    )
    created_at: float = Field(default_factory=time.time)
    submitted_at: float | None = None
    last_progress_at: float | None = Field(default=None, description="When the provider last reported progress.")
    unavailable_since: float | None = Field(default=None, description="First of the current run of failed calls.")
    finished_at: float | None = None
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = None
    lease_token: int = Field(default=0, description="Fencing token: grows with every claim of the row.")
    updated_at: float = Field(default_factory=time.time)


class RoutingDecision(SQLModel, table=True):
    """One routing choice for part of a batch: the ranked candidates, the one taken and why."""

    __tablename__ = "routing_decisions"

    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(foreign_key="batches.id", index=True, max_length=64)
    shard_id: str | None = Field(default=None, max_length=64, description="The shard that failed, for a failover.")
    kind: str = Field(max_length=16, description="'route', 'failover' or 'retry'.")
    model: str = Field(max_length=256)
    policy: str = Field(max_length=64)
    chosen_provider: str | None = Field(default=None, max_length=128)
    reason: str = Field(sa_type=Text)
    cause: str | None = Field(default=None, sa_type=Text, description="What made a failover or retry necessary.")
    request_count: int = 0
    candidates: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: float = Field(default_factory=time.time)


class ProviderHealth(SQLModel, table=True):
    """Circuit breaker of one provider, shared by every gateway process."""

    __tablename__ = "provider_health"

    provider: str = Field(primary_key=True, max_length=128)
    circuit: str = Field(default="closed", max_length=16, description="'closed', 'open' or 'half_open'.")
    consecutive_failures: int = 0
    opened_at: float | None = None
    probe_until: float | None = Field(default=None, description="A half-open probe is in progress until then.")
    last_error: str | None = Field(default=None, sa_type=Text)
    last_failure_at: float | None = None
    last_success_at: float | None = None
    rate_limited_until: float | None = Field(
        default=None, description="A 429 holds every process's requests to the provider until then (database clock)."
    )
    updated_at: float = Field(default_factory=time.time)


class ProviderPacing(SQLModel, table=True):
    """One provider's request timeline, shared by every gateway process (see :mod:`gateway.routing.limits`)."""

    __tablename__ = "provider_pacing"

    provider: str = Field(primary_key=True, max_length=128)
    next_free_at: float = Field(
        default=0.0, description="Unix time (database clock) from which the timeline is not reserved yet."
    )
    updated_at: float = Field(default_factory=time.time)


class ProviderSlots(SQLModel, table=True):
    """The requests one gateway process may have in flight at one provider at once: its share of the provider's
    ``max_concurrency``, held for a short lease (see :mod:`gateway.routing.slots`)."""

    __tablename__ = "provider_slots"

    provider: str = Field(primary_key=True, max_length=128)
    holder: str = Field(primary_key=True, max_length=128, description="The process: host, pid and a random part.")
    slots: int = Field(default=0, description="Requests it may have in flight (at least those it has).")
    wanted: int = Field(default=0, description="Requests it had in flight or waiting when it last claimed.")
    limit: int = Field(default=0, description="The provider's max_concurrency as this process is configured.")
    expires_at: float = Field(description="Unix time (database clock) after which its slots are anyone's.")


class ApiRateLimit(SQLModel, table=True):
    """The request timeline of one client key or team (see :mod:`gateway.db.ratelimits`), shared by every
    API replica."""

    __tablename__ = "api_rate_limits"

    name: str = Field(primary_key=True, max_length=96, description="'key:<key id>' or 'team:<team id>'.")
    next_free_at: float = Field(default=0.0, description="Unix time from which the timeline is not reserved yet.")


UNREAD = "unread"
"""Ledger kind: what a provider batch billed for answers the gateway could not read."""
UNREAD_RERUN = "unread_rerun"
"""Ledger kind: the same, for answers whose requests run again (so paid twice)."""
PAID_TWICE_KINDS = ("abandoned", UNREAD_RERUN)
"""Ledger kinds of spend on requests that were run again elsewhere: a batch's "paid twice"."""


class LedgerEntry(SQLModel, table=True):
    """What one collected shard cost: written once, in the transaction that closes the shard."""

    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_team_time", "team_id", "created_at"),
        UniqueConstraint("shard_id", "kind", name="uq_ledger_shard_kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    shard_id: str = Field(max_length=64)
    kind: str = Field(
        default="served",
        max_length=16,
        description="'served': the shard's collected requests; 'abandoned': what an abandoned provider batch billed; "
        "'unread' / 'unread_rerun': what its provider batch billed for answers the gateway could not read (whose "
        "requests then ran again).",
    )
    batch_id: str = Field(index=True, max_length=64)
    team_id: str = Field(max_length=64)
    api_key_id: str | None = Field(default=None, max_length=64)
    provider: str = Field(max_length=128)
    model: str = Field(max_length=256)
    provider_model: str = Field(max_length=256)
    mode: str = Field(max_length=8)
    requests: int = 0
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cached_tokens: int = Field(default=0, sa_type=BigInteger)
    cache_write_tokens: int = Field(default=0, sa_type=BigInteger)
    cost_usd: float = 0.0
    list_cost_usd: float = Field(default=0.0, description="The same tokens at synchronous list prices.")
    created_at: float = Field(default_factory=time.time, index=True)


class AbandonedProviderBatch(SQLModel, table=True):
    """A provider batch the gateway stopped waiting for: still owned until the provider ends it.

    Work moved off it (failover, stall, a worker that lost its lease after creating it), so its
    answers are not used; but it may still run and bill. The gateway sends it a cancel as soon as
    the provider answers, polls it until it ends, and records what it billed in the ledger (kind
    ``abandoned``) against the batch and team.
    """

    __tablename__ = "abandoned_provider_batches"
    __table_args__ = (
        Index("ix_abandoned_state_due", "state", "next_action_at"),
        UniqueConstraint("provider", "submit_token"),
    )

    id: int | None = Field(default=None, primary_key=True)
    shard_id: str = Field(max_length=64, index=True)
    batch_id: str = Field(max_length=64, index=True)
    team_id: str = Field(max_length=64)
    api_key_id: str | None = Field(default=None, max_length=64)
    provider: str = Field(max_length=128)
    model: str = Field(max_length=256)
    provider_model: str = Field(max_length=256)
    submit_token: str = Field(max_length=64)
    provider_batch_id: str | None = Field(
        default=None, max_length=256, description="Unknown when the create call's answer was lost: found by token."
    )
    origin: str = Field(
        default="abandoned",
        max_length=16,
        description="'abandoned': work moved off it; 'orphan': created by a worker that had lost its lease.",
    )
    reason: str = Field(sa_type=Text, description="Why work moved off it.")
    state: str = Field(default="open", max_length=16, description="'open' (not ended at the provider) or 'settled'.")
    cancel_sent_at: float | None = None
    provider_status: str | None = Field(default=None, max_length=64)
    requests_billed: int = 0
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cost_usd: float = 0.0
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    attempts: int = 0
    next_action_at: float = Field(default_factory=time.time)
    last_error: str | None = Field(default=None, sa_type=Text)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: float | None = None
    lease_token: int = 0
    created_at: float = Field(default_factory=time.time)
    settled_at: float | None = None


class IdempotencyRecord(SQLModel, table=True):
    """Remembers the object an ``Idempotency-Key`` created, per team and kind of request."""

    __tablename__ = "idempotency_keys"

    team_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True, max_length=256)
    fingerprint: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    created_at: int = Field(default_factory=now_s)


class Budget(SQLModel, table=True):
    """A spending limit for one UTC calendar period, for one team or for all teams together.

    ``scope`` is ``"global"`` or ``"team:<team id>"`` (``team_id`` repeats the id for joins); there is
    at most one budget per scope and period. A hard budget refuses and pauses work once spent.
    """

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("scope", "period"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=80, description="'global' or 'team:<team id>'.")
    team_id: str | None = Field(default=None, foreign_key="teams.id", index=True, max_length=64)
    period: str = Field(max_length=8, description="'day' or 'month' (UTC calendar periods).")
    limit_usd: float
    hard: bool = Field(default=False, description="Refuse new batches and pause queued shards once exhausted.")
    thresholds: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class BillingAlert(SQLModel, table=True):
    """A budget threshold crossed or a batch costing far more than estimated; fires once (``dedup_key``)."""

    __tablename__ = "billing_alerts"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32, description="'budget_threshold' or 'anomaly'.")
    dedup_key: str = Field(
        unique=True, max_length=200, description="One alert per budget, period, limit and threshold, or per batch."
    )
    budget_id: int | None = None
    team_id: str | None = Field(default=None, max_length=64)
    batch_id: str | None = Field(default=None, max_length=64)
    period: str | None = Field(default=None, max_length=8)
    period_start: float | None = None
    threshold: float | None = Field(default=None, description="Fraction of the limit, or the anomaly cost factor.")
    spent_usd: float | None = None
    limit_usd: float | None = None
    message: str = Field(sa_type=Text)
    created_at: float = Field(default_factory=time.time, index=True)
    acknowledged_at: float | None = None


class WebhookDelivery(SQLModel, table=True):
    """The webhook outbox: one row per alert to post, written in the alert's transaction."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_state_due", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="billing_alerts.id", unique=True)
    state: str = Field(default="pending", max_length=16, description="'pending', 'delivered' or 'failed'.")
    attempts: int = 0
    next_attempt_at: float = Field(default_factory=time.time)
    delivered_at: float | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: float = Field(default_factory=time.time)


class OutputTokenStats(SQLModel, table=True):
    """What a team's past requests of one model and endpoint actually used: the basis of learned estimates.

    ``histogram`` counts answered requests by output tokens in log-spaced buckets (see
    :mod:`gateway.billing.history`); the sums give exact means. Updated in the transaction that writes a
    shard's ledger row, so each answer counts once.
    """

    __tablename__ = "output_token_stats"
    __table_args__ = (UniqueConstraint("team_id", "model", "endpoint"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str = Field(max_length=64)
    model: str = Field(max_length=256, description="The logical model.")
    endpoint: str = Field(max_length=64)
    requests: int = Field(default=0, sa_type=BigInteger, description="Answered requests counted.")
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    input_tokens: int = Field(default=0, sa_type=BigInteger, description="Input tokens the provider reported.")
    estimated_input_tokens: int = Field(
        default=0, sa_type=BigInteger, description="Request-body bytes / 4 of the same requests."
    )
    histogram: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: float = Field(default_factory=time.time)


class WebhookEndpoint(SQLModel, table=True):
    """Where a team's batch events are posted, signed with the endpoint's secret (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(default_factory=lambda: new_id("we_", 24), primary_key=True, max_length=64)
    team_id: str = Field(foreign_key="teams.id", index=True, max_length=64)
    name: str | None = Field(default=None, max_length=256)
    url: str = Field(sa_type=Text)
    event_types: list[str] = Field(sa_column=Column(JSON, nullable=False))
    signing_secret: str = Field(max_length=128, description="whsec_ + base64 of 32 random bytes; shown once.")
    created_at: int = Field(default_factory=now_s)
    deleted_at: int | None = None


class BatchEvent(SQLModel, table=True):
    """The outbox of batch webhooks: one event per batch and endpoint, queued once the batch's end is committed."""

    __tablename__ = "batch_events"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "batch_id"),
        Index("ix_batch_events_state_due", "state", "next_attempt_at"),
    )

    id: str = Field(default_factory=lambda: new_id("evt_", 32), primary_key=True, max_length=64)
    message_id: str = Field(
        default_factory=lambda: new_id("wh_", 32), max_length=64, description="webhook-id: the same on every retry."
    )
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", max_length=64)
    batch_id: str = Field(max_length=64)
    type: str = Field(max_length=32, description="batch.completed, batch.failed, batch.expired or batch.cancelled.")
    created_at: int = Field(description="When the batch reached its end (the event's created_at).")
    state: str = Field(default="pending", max_length=16, description="'pending', 'delivered' or 'gave_up'.")
    attempts: int = 0
    next_attempt_at: float = Field(default_factory=time.time)
    queued_at: float = Field(default_factory=time.time)
    delivered_at: float | None = None
    last_status: int | None = Field(default=None, description="HTTP status of the last attempt, if it got one.")
    last_error: str | None = Field(default=None, sa_type=Text)


class MessageBatch(SQLModel, table=True):
    """A batch created through the Anthropic-compatible endpoint: its requests run as the batch ``batch_id``.

    Its public id is ``msgbatch_`` plus the batch id's suffix. Requests whose ``params`` could not be
    translated never reach the batch: their ``errored`` results wait in the blob ``intake_errors_key``.
    """

    __tablename__ = "message_batches"

    batch_id: str = Field(foreign_key="batches.id", primary_key=True, max_length=64)
    team_id: str = Field(foreign_key="teams.id", index=True, max_length=64)
    request_count: int = Field(description="Requests in the create call, those errored at intake included.")
    intake_errors: int = Field(default=0, description="Requests answered 'errored' without being run.")
    intake_errors_key: str | None = Field(default=None, max_length=256)
    counts: dict[str, int] | None = Field(
        default=None, sa_column=Column(JSON), description="Final request_counts, kept once processing ended."
    )
    deleted_at: int | None = None
