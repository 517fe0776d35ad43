"""Database access for shards: claims, capacity counts, and batch progress aggregates.

The caller's unit of work commits these writes; a claim (:func:`claim_shard`) runs in a unit of work of its
own (see :func:`gateway.db.repo.claim_batch`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.leases import Lease, keeping_wakeups, mirror_write
from gateway.db.models import PAID_TWICE_KINDS, Batch, LedgerEntry, Shard
from gateway.db.point_reads import PointReads
from gateway.db.repo import ATTEMPT_LOG_KEEP, OPEN_SHARD_GROUPS, OpenShardWait

ACTIVE_STATES = ("queued", "submitting", "running", "executing", "collecting")
IN_FLIGHT_STATES = ("submitting", "running", "executing")


async def claim_shard(session: AsyncSession, owner: str, lease_s: float) -> Shard | None:
    """Claim one due shard whose lease is free, with a compare-and-set UPDATE (see repo.claim_batch: run it in
    a unit of work of its own)."""
    now = time.time()
    free = or_(col(Shard.lease_expires_at).is_(None), col(Shard.lease_expires_at) < now)
    due = (col(Shard.state).in_(ACTIVE_STATES), col(Shard.next_action_at) <= now, free)
    candidates = (await session.exec(select(Shard.id).where(*due).order_by(col(Shard.next_action_at)).limit(8))).all()
    for shard_id in candidates:
        result = await session.exec(
            update(Shard)
            .where(col(Shard.id) == shard_id, *due)
            .values(lease_owner=owner, lease_expires_at=now + lease_s, lease_token=col(Shard.lease_token) + 1)
        )
        if result.rowcount == 1:
            return await session.get(Shard, shard_id)
    return None


async def release_shard(session: AsyncSession, shard_id: str, lease: Lease) -> None:
    """Give up this worker's lease (no-op once another worker holds the row)."""
    await session.exec(
        update(Shard)
        .where(col(Shard.id) == shard_id, *lease.holds(Shard))
        .values(lease_owner=None, lease_expires_at=None)
    )


async def state_and_due(session: AsyncSession, shard_id: str) -> tuple[str, float] | None:
    """A shard's state and ``next_action_at`` as stored (None: no such shard)."""
    row = (await session.exec(select(Shard.state, Shard.next_action_at).where(col(Shard.id) == shard_id))).first()
    return None if row is None else (row[0], float(row[1]))


async def extend_shard_lease(session: AsyncSession, shard_id: str, lease: Lease) -> bool:
    """Heartbeat for a shard lease."""
    result = await session.exec(
        update(Shard)
        .where(col(Shard.id) == shard_id, *lease.holds(Shard))
        .values(lease_expires_at=time.time() + lease.lease_s)
    )
    return bool(result.rowcount)


async def save_shard(session: AsyncSession, shard: Shard, lease: Lease, **values: Any) -> bool:
    """Write ``values`` to a shard while ``lease`` is its current one; False (nothing written) if lost.

    A ``next_action_at`` never undoes a wake-up: when someone else made the shard due earlier while this worker
    held it (a provider webhook saying its batch ended, a budget stop waking open shards), the earlier time is
    kept, so a wake-up that arrives while the shard's step runs is not overwritten by the step's own schedule."""
    if lease.lost:
        return False
    values["updated_at"] = time.time()
    written = dict(values)
    if values.get("next_action_at") is not None:
        written["next_action_at"] = keeping_wakeups(Shard, shard.next_action_at, values["next_action_at"])
    result = await session.exec(update(Shard).where(col(Shard.id) == shard.id, *lease.holds(Shard)).values(**written))
    if result.rowcount:
        mirror_write(session, shard, values)
    else:
        lease.lost = True
    return bool(result.rowcount)


async def record_shard_failure(
    session: AsyncSession, shard: Shard, lease: Lease, entry: dict[str, object], retry_at: float, wait: str
) -> bool:
    """Note a failed attempt of the shard's step, say so as its waiting reason, and retry it at ``retry_at``."""
    values = {
        "stage_attempts": shard.stage_attempts + 1,
        "attempt_log": [*(shard.attempt_log or [])[-(ATTEMPT_LOG_KEEP - 1) :], entry],
        "next_action_at": retry_at,
        "wait_code": "retrying",
        "wait_detail": wait,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    return await save_shard(session, shard, lease, **values)


async def in_flight(session: AsyncSession, provider: str) -> tuple[int, dict[str, int]]:
    """Provider batches running at ``provider`` and their estimated input tokens per provider model."""
    rows = (
        await session.exec(
            select(Shard.provider_model, func.count(), func.coalesce(func.sum(Shard.estimated_input_tokens), 0))
            .where(Shard.provider == provider, col(Shard.state).in_(IN_FLIGHT_STATES))
            .group_by(Shard.provider_model)
        )
    ).all()
    return sum(int(r[1]) for r in rows), {str(r[0]): int(r[2]) for r in rows}


async def batch_shards(session: AsyncSession, batch_id: str) -> Sequence[Shard]:
    """Every shard of a batch in sequence order."""
    return (await session.exec(select(Shard).where(Shard.batch_id == batch_id).order_by(col(Shard.seq)))).all()


async def lock_batch(session: AsyncSession, batch_id: str) -> None:
    """Hold the batch row until commit, so shards finishing together update it one after another.

    Each then sums the shards after the others committed (PostgreSQL, READ COMMITTED); SQLite
    runs one write transaction at a time anyway.
    """
    await session.execute(sa_select(col(Batch.id)).where(col(Batch.id) == batch_id).with_for_update())


def providers_value(providers: Iterable[str]) -> str | None:
    """The batch's ``providers`` column for the providers its shards run on (sorted, comma-separated)."""
    return ",".join(sorted(set(providers)))[:1024] or None


def _request_sums() -> tuple[ColumnElement[int], ColumnElement[int]]:
    """The batch's completed and failed requests, summed over its shards (collected and in progress)."""
    return (
        func.coalesce(func.sum(Shard.result_completed + Shard.progress_completed), 0),
        func.coalesce(func.sum(Shard.result_failed + Shard.progress_failed), 0),
    )


async def refresh_batch_counts(session: AsyncSession, batch_id: str) -> None:
    """Recompute a batch's request counts alone (call :func:`lock_batch` first): all a shard's progress changes.

    Its tokens, spend and providers change only when a shard is collected or added, which refresh them all
    (:func:`refresh_batch_progress`); a poll or a fan-out's progress need not read the ledger each time.
    """
    sums = sa_select(*_request_sums()).where(col(Shard.batch_id) == batch_id)
    completed, failed = (await session.execute(sums)).one()
    await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch_id)
        .values(request_completed=int(completed), request_failed=int(failed), updated_at=time.time())
    )


async def refresh_batch_progress(session: AsyncSession, batch_id: str) -> None:
    """Recompute a batch's request counts, token usage, spend and providers (call :func:`lock_batch` first)."""
    totals = (
        await session.execute(
            sa_select(
                *_request_sums(),
                func.coalesce(func.sum(Shard.input_tokens), 0),
                func.coalesce(func.sum(Shard.output_tokens), 0),
                func.coalesce(func.sum(Shard.cached_tokens), 0),
                func.coalesce(func.sum(Shard.reasoning_tokens), 0),
            ).where(col(Shard.batch_id) == batch_id)
        )
    ).one()
    spend = (
        await session.execute(
            sa_select(
                func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0),
                func.coalesce(func.sum(LedgerEntry.list_cost_usd), 0.0),
                func.coalesce(func.sum(LedgerEntry.cost_usd).filter(col(LedgerEntry.kind).in_(PAID_TWICE_KINDS)), 0.0),
            ).where(col(LedgerEntry.batch_id) == batch_id)
        )
    ).one()
    providers = (
        await session.exec(select(Shard.provider).where(Shard.batch_id == batch_id).distinct().order_by(Shard.provider))
    ).all()
    await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch_id)
        .values(
            cost_usd=float(spend[0]),
            list_cost_usd=float(spend[1]),
            abandoned_cost_usd=float(spend[2]),
            providers=providers_value(providers),
            request_completed=int(totals[0]),
            request_failed=int(totals[1]),
            input_tokens=int(totals[2]),
            output_tokens=int(totals[3]),
            cached_tokens=int(totals[4]),
            reasoning_tokens=int(totals[5]),
            updated_at=time.time(),
        )
    )


PROVIDER_DOWN_WAITS = ("provider_unreachable", "circuit_open", "auth_failed")
"""Waiting codes of shards that wait for their provider to answer again."""


async def wake_waiting_on(session: AsyncSession, provider: str, codes: Sequence[str] = PROVIDER_DOWN_WAITS) -> int:
    """Make the unfinished shards of ``provider`` that wait with one of ``codes`` due now; how many were."""
    now = time.time()
    result = await session.exec(
        update(Shard)
        .where(
            col(Shard.provider) == provider,
            col(Shard.state) != "done",
            col(Shard.wait_code).in_(codes),
            col(Shard.next_action_at) > now,
        )
        .values(next_action_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


async def open_shard_count(session: AsyncSession, batch_id: str) -> int:
    """Shards of the batch that have not finished."""
    query = select(func.count()).select_from(Shard).where(Shard.batch_id == batch_id, col(Shard.state) != "done")
    return int((await session.exec(query)).one())


async def in_flight_by_provider(session: AsyncSession) -> dict[str, int]:
    """Provider batches (and fan-out runs) in flight, per provider."""
    rows = (
        await session.exec(
            select(Shard.provider, func.count()).where(col(Shard.state).in_(IN_FLIGHT_STATES)).group_by(Shard.provider)
        )
    ).all()
    return {str(provider): int(count) for provider, count in rows}


async def next_seq(session: AsyncSession, batch_id: str) -> int:
    """The next free shard number of a batch (call under :func:`lock_batch`)."""
    query = select(func.coalesce(func.max(Shard.seq), -1)).where(Shard.batch_id == batch_id)
    return int((await session.exec(query)).one()) + 1


@dataclass(frozen=True)
class CanaryStats:
    """Where a batch's canary stands."""

    open_canary: int
    held: int
    requests: int
    completed: int
    failed: int
    cost_usd: float


async def canary_stats(session: AsyncSession, batch_id: str) -> CanaryStats:
    """Open canary shards, held shards, and the finished canary's requests, outcomes and spend."""
    is_canary = (col(Shard.batch_id) == batch_id) & col(Shard.canary)
    open_canary = (await session.exec(select(func.count()).where(is_canary, col(Shard.state) != "done"))).one()
    held = (
        await session.exec(select(func.count()).where(col(Shard.batch_id) == batch_id, col(Shard.state) == "held"))
    ).one()
    totals = (
        await session.execute(
            sa_select(
                func.coalesce(func.sum(Shard.request_count).filter(col(Shard.generation) == 0), 0),
                func.coalesce(func.sum(Shard.result_completed), 0),
                func.coalesce(func.sum(Shard.result_failed), 0),
            ).where(is_canary)
        )
    ).one()
    cost = (
        await session.execute(
            sa_select(func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0))
            .join(Shard, col(Shard.id) == col(LedgerEntry.shard_id))
            .where(is_canary)
        )
    ).one()
    return CanaryStats(int(open_canary), int(held), int(totals[0]), int(totals[1]), int(totals[2]), float(cost[0]))


async def poll_now(session: AsyncSession, shard: Shard, lease: Lease, provider_batch_ids: list[str]) -> int:
    """Make the running shards of these provider batches (at ``shard``'s provider) due now, because a poll of
    ``shard`` showed them ended; how many. Nothing changes once ``lease`` is no longer ``shard``'s current one
    (a worker woken from a freeze must not act on an old answer); ``lease.lost`` says so."""
    if lease.lost:
        return 0
    now = time.time()
    # Touching the polled shard under its lease fences this statement (and locks the row on PostgreSQL,
    # so no other worker can claim it before the transaction ends).
    held = await session.exec(
        update(Shard).where(col(Shard.id) == shard.id, *lease.holds(Shard)).values(updated_at=now)
    )
    if not held.rowcount:
        lease.lost = True
        return 0
    return await _running_due(session, shard.provider, provider_batch_ids, now)


async def _running_due(session: AsyncSession, provider: str, provider_batch_ids: list[str], now: float) -> int:
    """Make the running shards of these provider batches at ``provider`` due at ``now``; how many changed.

    A shard due already is set to ``now`` too: its poll then takes no status read from before this wake-up
    (``fresh_after``), which could still show the batch running. One held by a worker keeps the wake-up through
    that worker's save of its schedule (:func:`~gateway.db.leases.keeping_wakeups`)."""
    result = await session.exec(
        update(Shard)
        .where(
            col(Shard.provider) == provider,
            col(Shard.provider_batch_id).in_(provider_batch_ids),
            col(Shard.state) == "running",
        )
        .values(next_action_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


async def release_held(session: AsyncSession, batch_id: str) -> None:
    """Let a batch's held shards run."""
    await session.exec(
        update(Shard)
        .where(col(Shard.batch_id) == batch_id, col(Shard.state) == "held")
        .values(state="queued", next_action_at=time.time(), updated_at=time.time())
    )


async def drop_held(session: AsyncSession, batch_id: str, reason: str) -> None:
    """End a batch's held shards unrun: they are collected into error lines."""
    await session.exec(
        update(Shard)
        .where(col(Shard.batch_id) == batch_id, col(Shard.state) == "held")
        .values(
            state="collecting",
            end_reason="canary_failed",
            last_error=reason,
            next_action_at=time.time(),
            updated_at=time.time(),
        )
    )


async def open_shard_waits(source: AsyncSession | PointReads, batch_id: str) -> list[OpenShardWait]:
    """The unfinished shards of a batch, grouped (:data:`~gateway.db.repo.OpenShardWait`), read in ``source``'s
    transaction or (:class:`PointReads`, a status read) on its direct connection."""
    parameters = {"batch_id": batch_id, "done": "done"}
    if isinstance(source, PointReads):
        rows: Sequence[Sequence[Any]] = await source.all(OPEN_SHARD_GROUPS, parameters)
    else:
        rows = (await source.execute(OPEN_SHARD_GROUPS, params=parameters)).all()
    return [(str(state), code, detail, int(count)) for state, code, detail, count, _ in rows]


async def hold_for_operator(session: AsyncSession, batch_id: str, detail: str) -> None:
    """Queue a batch's held shards behind an operator's decision: they stay unsent (submit sees the batch's hold)
    and wake on a release or a cancel."""
    now = time.time()
    await session.exec(
        update(Shard)
        .where(col(Shard.batch_id) == batch_id, col(Shard.state) == "held")
        .values(
            state="queued",
            next_action_at=now + 3600.0,
            wait_code="canary_hold",
            wait_detail=detail[:2000],
            updated_at=now,
        )
    )


async def poll_ended_now(session: AsyncSession, provider: str, provider_batch_id: str, now: float) -> str | None:
    """Make the running shard that holds ``provider_batch_id`` at ``provider`` due for its poll at once (its
    provider announced that the batch ended). The state of the open shard that holds it, or None when no open
    shard does (ended already, or its create call's answer not stored yet)."""
    holder = (
        await session.exec(
            select(Shard.state).where(
                col(Shard.provider) == provider,
                col(Shard.state).in_(ACTIVE_STATES),
                col(Shard.provider_batch_id) == provider_batch_id,
            )
        )
    ).first()
    if holder == "running":
        await _running_due(session, provider, [provider_batch_id], now)
    return holder


async def creating_at(session: AsyncSession, provider: str) -> bool:
    """True while a shard's create call at ``provider`` may be under way (a shard in ``submitting``)."""
    query = select(Shard.id).where(col(Shard.provider) == provider, col(Shard.state) == "submitting").limit(1)
    return (await session.exec(query)).first() is not None
