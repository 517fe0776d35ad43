"""Rules every stage of the data path agrees on: when work must stop, how a shard ends or waits, when
a provider counts as down (and when its work may move), and blob names.

Stages never import one another and never call the next stage: a stage hands off by writing its row
(e.g. :func:`end_shard` moves a shard to ``collecting``) and the worker runs whatever is due next.
Every write here is fenced by the caller's :class:`~gateway.db.leases.Lease`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.billing import guard
from gateway.billing.estimate import cost_usd
from gateway.context import GatewayContext
from gateway.db import abandoned as abandoned_db
from gateway.db import repo
from gateway.db import routing as routing_db
from gateway.db import shards as shard_db
from gateway.db.leases import Lease
from gateway.db.models import Batch, Shard, now_s
from gateway.db.point_reads import PointReads
from gateway.db.unit_of_work import Rollback, reading, transaction
from gateway.providers.base import ProviderError, ProviderRateLimited
from gateway.routing.placement import NoUsableProvider, batch_hints, rank
from gateway.storage import BlobStore
from router_policies.base import PolicyError

log = logging.getLogger(__name__)


PROVIDER_FAILURES = frozenset({"failed", "expired", "cancelled", "stalled", "abandoned", "rerouted", "behind"})
"""End reasons of a shard whose provider let it down as a whole (as opposed to single requests); ``behind``:
its provider batch was still running too close to the batch's deadline."""
PROVIDER_FAILURE_TEXT = {
    "failed": "failed the provider batch",
    "expired": "expired the provider batch before it finished",
    "cancelled": "cancelled the provider batch",
    "stalled": "made no progress (stalled batch abandoned)",
    "abandoned": "stayed unreachable (batch abandoned)",
    "rerouted": "could not take the shard",
    "behind": "was too slow for the deadline (batch cancelled)",
}
"""What a provider did, by a shard's end reason: ``cheap expired the provider batch before it finished``."""


def shard_tier(shard: Shard) -> str:
    """The synchronous service tier a shard's requests ask for: ``flex``, ``priority`` or ``standard``."""
    return shard.mode if shard.mode in ("flex", "priority") else "standard"


def deadline_at(batch: Batch) -> float | None:
    """When the client wants the batch's results (its ``deadline`` hint), if it gave one."""
    hints = batch_hints(batch)
    return None if hints.deadline_s is None else batch.created_at + hints.deadline_s


def escalation_at(batch: Batch, shard: Shard, ahead_s: float) -> float | None:
    """When a provider batch of ``shard`` still running is cancelled and its rest moved to a faster tier: ``ahead_s``
    (``routing.escalate_before_deadline_s``) before the batch's deadline, or halfway from the shard's submission to
    the deadline when that comes later. A deadline shorter than the margin (10 minutes against 15) thus still gives
    a provider batch that fits it half the time left, instead of moving it at its first poll. None: never (no
    deadline, or a margin of 0)."""
    due = deadline_at(batch)
    if due is None or ahead_s <= 0:
        return None
    submitted_at = shard.submitted_at or time.time()
    return max(due - ahead_s, submitted_at + (due - submitted_at) / 2)


def window_left_s(batch: Batch) -> float:
    """Seconds until the batch's completion window closes (a day for a batch without one)."""
    if batch.expires_at is None:
        return 24 * 3600.0
    return max(0.0, batch.expires_at - time.time())


def batch_window_closed(batch: Batch) -> bool:
    """True once the batch's completion window has passed."""
    return batch.expires_at is not None and time.time() >= batch.expires_at


def stop_reason(batch: Batch) -> str | None:
    """Why the batch's unfinished work must stop (``cancelled``, ``budget_exceeded``: stopped to hold a hard
    budget, ``expired``), or None to go on."""
    if batch.status == "cancelling":
        return "budget_exceeded" if batch.hold_reason == "budget" else "cancelled"
    return "expired" if batch_window_closed(batch) else None


# --- shards: ending, waiting, moving ----------------------------------------------------------------


async def end_shard(
    context: GatewayContext, shard: Shard, lease: Lease, *, reason: str, error: str | None = None
) -> bool:
    """Hand a shard that will get no (more) provider results to collection; False if the lease was lost."""
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            lease,
            state="collecting",
            end_reason=reason,
            last_error=error or shard.last_error,
            next_action_at=time.time(),
            wait_code=None,
            wait_detail=None,
        )
    return saved


async def wait(
    context: GatewayContext,
    shard: Shard,
    lease: Lease,
    code: str,
    detail: str,
    until: float,
    **values: object,
) -> bool:
    """Leave the shard as it is until ``until``, saying why (``code`` and ``detail``, shown to operators
    and clients); ``values`` are written with it."""
    async with transaction(context.sessions) as session:
        saved = await shard_db.save_shard(
            session, shard, lease, next_action_at=until, wait_code=code, wait_detail=detail[:2000], **values
        )
    return saved


def at(timestamp: float) -> str:
    """A time for waiting reasons: ``HH:MM:SS UTC``."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(timestamp))


def announces_ends(context: GatewayContext, provider: str) -> bool:
    """True at a provider whose webhooks announce ended batches (``webhook_secret_env``): a webhook makes the
    poll of an ended batch due at once."""
    return context.providers.get(provider).config.webhook_secret_env is not None


def first_poll_delay_s(context: GatewayContext, provider: str) -> float:
    """The first delay between status polls of a provider batch (doubling up to ``worker.provider_poll_max_s``):
    ``worker.provider_poll_announced_min_s`` at a provider whose webhooks announce ended batches
    (``webhook_secret_env``), where the webhook brings the end; else ``worker.provider_poll_min_s``."""
    settings = context.settings.worker
    first = (
        settings.provider_poll_announced_min_s if announces_ends(context, provider) else settings.provider_poll_min_s
    )
    return min(settings.provider_poll_max_s, first)


def jitter(seconds: float) -> float:
    """``seconds`` give or take 20 %, so that many waiters do not wake together."""
    return seconds * random.uniform(0.8, 1.2)


def rate_limited_delay(retry_after_s: float | None, fallback_s: float) -> float:
    """How long to wait after a 429: the provider's Retry-After (with jitter, never less), else ``fallback_s``."""
    if retry_after_s:
        return retry_after_s * random.uniform(1.0, 1.3)
    return jitter(fallback_s)


def rate_limited_detail(provider: str, until: float, doing: str = "") -> str:
    """The waiting reason of a shard held by a provider's 429s: ``P is rate limiting[ doing] (HTTP 429) until
    HH:MM:SS UTC`` (``doing``: what is limited, e.g. ``result downloads``)."""
    return f"{provider} is rate limiting{' ' + doing if doing else ''} (HTTP 429) until {at(until)}"


@dataclass(frozen=True)
class MoveVerdict:
    """Whether a shard's work may leave its failing provider, and the evidence either way."""

    allowed: bool
    evidence: str


PROBE_TIMEOUT_S = 10.0


async def may_leave_provider(
    context: GatewayContext,
    batch: Batch,
    shard: Shard,
    failure: str,
    answers_again: Callable[[], Awaitable[object]] | None = None,
) -> MoveVerdict:
    """Decide whether a shard's requests may leave its unreachable provider (``failure`` says how it failed).

    A rate-limited provider never reaches here: it is waited out. A pinned shard may always "leave" (its
    requests then fail with a clear error instead of waiting). Otherwise another provider serving the
    model must be healthy right now (its circuit closed and its health probe answering), the move must
    fit the batch's hard budgets at that provider's price, and ``answers_again`` (the failed call, tried
    once more once a candidate qualifies) must still fail: the failure may be older than the candidate's
    probe (a call that failed just before its provider came back). When no candidate qualifies, the work
    waits where it is.
    """
    if shard.pinned:
        return MoveVerdict(True, f"{failure}; the batch pins {shard.provider}, so its requests fail instead of moving")
    try:
        ranking = await rank(
            context,
            batch,
            context.offers.resolve(shard.model),
            requests=shard.request_count,
            input_tokens=shard.estimated_input_tokens,
            output_tokens=shard.estimated_output_tokens,
            exclude=frozenset({shard.provider}),
        )
    except (LookupError, NoUsableProvider, PolicyError) as exc:
        return MoveVerdict(False, f"{failure}; nowhere else to go: {exc}")
    async with reading(context.sessions) as session:
        circuits = {name: row.circuit for name, row in (await routing_db.health_rows(session)).items()}
    tried: list[str] = []
    over_budget: list[str] = []
    for choice in ranking.choices:
        name = choice.provider
        if name == shard.provider or name in tried:
            continue
        tried.append(name)
        if circuits.get(name, "closed") != "closed":
            continue
        new_cost = cost_usd(shard.estimated_input_tokens, shard.estimated_output_tokens, choice.priced.paid_rates)
        async with reading(context.sessions) as session:
            refusal = await guard.move_fits(session, batch, shard.estimated_cost_usd, new_cost)
        if refusal is not None:
            over_budget.append(f"{name} at ${new_cost:.4f}: {refusal}")
            continue
        latency = await _probe(context, name)
        if latency is None:
            continue
        if answers_again is not None and await _answers(answers_again):
            return MoveVerdict(False, f"{failure}; {shard.provider} answers again, so nothing moves")
        return MoveVerdict(
            True, f"{failure}; {name} is healthy (circuit closed, health probe answered in {latency:.2f}s)"
        )
    checked = ", ".join(tried) or "none"
    if over_budget:
        return MoveVerdict(False, f"{failure}; moving would not fit the budget ({'; '.join(over_budget)})")
    return MoveVerdict(False, f"{failure}; no other provider is healthy now (checked: {checked})")


async def _probe(context: GatewayContext, name: str) -> float | None:
    """Seconds ``name``'s health probe took to answer healthy; None when it failed or timed out."""
    started = time.monotonic()
    try:
        report = await asyncio.wait_for(context.providers.get(name).health(), PROBE_TIMEOUT_S)
    except (TimeoutError, ProviderError) as exc:
        log.info("failover probe of %s failed: %s", name, exc)
        return None
    return time.monotonic() - started if report.healthy else None


async def _answers(call: Callable[[], Awaitable[object]]) -> bool:
    """Whether ``call`` reaches its provider now (a 429 is an answer: the provider is alive)."""
    try:
        await asyncio.wait_for(call(), PROBE_TIMEOUT_S)
    except ProviderRateLimited:
        return True
    except (TimeoutError, ProviderError):
        return False
    return True


async def abandon_provider_batch(
    context: GatewayContext, shard: Shard, batch: Batch, lease: Lease, reason: str
) -> bool:
    """Keep owning a provider batch the gateway stops waiting for: it gets a cancel as soon as the provider
    answers, is polled until it ends, and what it billed goes to the ledger (see :mod:`gateway.pipeline.settle`).

    Only while ``lease`` holds the shard, checked in the same transaction: a worker that lost the shard (frozen
    past its lease, say) leaves its provider batch to the shard's new owner, which may have collected it already
    (cancelling and billing it again would pay for it twice). False, with the lease marked lost, when it did."""
    held = False
    async with transaction(context.sessions) as session:
        held = await shard_db.extend_shard_lease(session, shard.id, lease)
        if not held:
            raise Rollback
        await abandoned_db.register(session, shard, batch, reason, provider_batch_id=shard.provider_batch_id)
    if not held:
        lease.lost = True
        log.warning("shard %s: not abandoning its provider batch: the shard is another worker's now", shard.id)
    return held


async def fail_batch(
    context: GatewayContext, batch: Batch, lease: Lease, code: str, message: str, line: int | None = None
) -> bool:
    """End a batch before any of it reached a provider, with one error in ``errors.data``."""
    async with transaction(context.sessions) as session:
        changed = await repo.update_batch_if(
            session,
            batch.id,
            expected_status=batch.status,
            values={
                "status": "failed",
                "failed_at": now_s(),
                "stage": "done",
                "errors": [{"code": code, "message": message, "param": None, "line": line}],
            },
            lease=lease,
        )
    return changed


async def end_unstarted(context: GatewayContext, batch: Batch, lease: Lease, status: str) -> None:
    """End a batch that never reached a provider (cancelled before routing)."""
    stamp = {"cancelled": "cancelled_at", "failed": "failed_at", "expired": "expired_at"}[status]
    async with transaction(context.sessions) as session:
        await repo.update_batch_if(
            session,
            batch.id,
            expected_status=batch.status,
            values={"status": status, stamp: now_s(), "stage": "done"},
            lease=lease,
        )


# --- blob names ----------------------------------------------------------------------------------


def shard_input_key(batch_id: str, seq: int, *, attempt: int) -> str:
    """Blob name of a first-placement shard's input, written by the route attempt with fencing token ``attempt``."""
    return f"shards/{batch_id}/{seq:05d}.r{attempt}.in.jsonl"


def shard_base(shard: Shard) -> str:
    """The prefix of every blob a shard's stages write."""
    return f"shards/{shard.batch_id}/{shard.seq:05d}"


def attempt_key(shard: Shard, lease: Lease, suffix: str) -> str:
    """A blob of one attempt at a shard's step: two attempts (two fencing tokens) never share a blob."""
    return f"{shard_base(shard)}.t{lease.token}.{suffix}"


def fanout_parts_prefix(shard: Shard) -> str:
    """Folder of a fan-out shard's answers: one part blob per run (or per flush), never rewritten."""
    return f"{shard_base(shard)}.fanout/"


async def gather_parts(blobs: BlobStore, prefix: str, dest: Path) -> int:
    """Concatenate every part blob under ``prefix`` into the local file ``dest``; return how many."""
    keys = sorted([info.key async for info in blobs.list(prefix)])
    with dest.open("wb") as sink:
        for key in keys:
            last = b"\n"
            async for chunk in blobs.iter_bytes(key):
                sink.write(chunk)
                last = chunk[-1:] or last
            if last != b"\n":
                sink.write(b"\n")  # a part cut short by a crash: its torn last line stays on its own
    return len(keys)


# --- why a batch waits ----------------------------------------------------------------------------------

WAIT_PRIORITY = (
    "auth_failed",
    "provider_unreachable",
    "circuit_open",
    "budget_hold",
    "rate_limited",
    "retrying",
    "queued_capacity",
    "canary_hold",
    "scheduled",
    "provider_turnaround",
)
"""Waiting codes, most telling first: a batch shows the first one any of its open shards has."""

WAITING_TEXT_LIMIT = 500


@dataclass(frozen=True)
class ShardWait:
    """What one unfinished shard is waiting for (see :func:`waiting_reason`)."""

    state: str
    code: str | None
    detail: str | None


def waiting_reason(batch: Batch, shards: list[ShardWait]) -> tuple[str, str] | None:
    """Why an unfinished batch is not done yet, as ``(code, sentence)``; None once it has ended.

    The batch's own stage speaks first (a failing validate, route or merge step); then the most telling
    reason among its open shards, with how many share it.
    """
    if batch.stage == "done":
        return None
    if batch.stage_attempts and batch.attempt_log:
        last = batch.attempt_log[-1]
        text = f"the '{batch.stage}' step failed {batch.stage_attempts} time(s), retrying: {last.get('message')}"
        return "retrying", text[:WAITING_TEXT_LIMIT]
    if batch.stage in ("validate", "route", "merge"):
        return None  # moving through intake or merge: nothing to wait for
    open_shards = [s for s in shards if s.state != "done"]
    canary = ShardWait("held", "canary_hold", "held until the batch's canary requests have run and been judged")
    waits = [canary if s.state == "held" else s for s in open_shards]
    for code in WAIT_PRIORITY:
        matching = [s for s in waits if s.code == code]
        if matching:
            prefix = f"{len(matching)} of {len(open_shards)} open shards: " if len(open_shards) > 1 else ""
            return code, (prefix + (matching[0].detail or code))[:WAITING_TEXT_LIMIT]
    if open_shards:
        return "working", f"{len(open_shards)} shard(s) in progress"
    return None


async def batch_waiting(source: AsyncSession | PointReads, batch: Batch) -> tuple[str, str] | None:
    """:func:`waiting_reason` of a batch, reading its open shards in a session or, for a status read, with
    :class:`PointReads` (nothing is read for a finished batch)."""
    if batch.stage == "done":
        return None
    return waiting_of(batch, await shard_db.open_shard_waits(source, batch.id))


def waiting_of(batch: Batch, open_shards: Sequence[repo.OpenShardWait]) -> tuple[str, str] | None:
    """:func:`waiting_reason` of a batch whose open shards were read already (grouped: :data:`repo.OpenShardWait`)."""
    if batch.stage == "done":
        return None
    waits = [wait for state, code, detail, count in open_shards for wait in [ShardWait(state, code, detail)] * count]
    return waiting_reason(batch, waits)
