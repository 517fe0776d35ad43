"""The database access layer for teams, keys, files, batches and idempotency records.

HTTP handlers and pipeline stages call these functions; nothing else builds queries on these
tables. Every function takes an open ``AsyncSession`` and leaves committing to the caller's unit of work
(:mod:`gateway.db.unit_of_work`); a claim (:func:`claim_batch`) runs in a unit of work of its own, so it
is committed the moment that block ends.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import bindparam, case, func, literal_column, or_, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select as select_columns
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import Select

from gateway.db.leases import Lease
from gateway.db.models import ApiKey, Batch, IdempotencyRecord, Shard, StoredFile, Team
from gateway.db.point_reads import PointReads

KEY_PREFIX = "bgw-"
MAX_KEY_LIFETIME_S = 10 * 366 * 24 * 3600
"""Furthest expiry a key may be given: ten years ahead (a key meant to live longer needs none)."""
ATTEMPT_LOG_KEEP = 20
"""Failed attempts kept on a batch or shard row (the newest)."""


def hash_key(secret: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(secret.encode()).hexdigest()


# --- teams and keys ---------------------------------------------------------------------------


async def get_or_create_team(session: AsyncSession, name: str) -> Team:
    """The team with this name, created if missing."""
    team = (await session.exec(select(Team).where(Team.name == name))).first()
    if team is None:
        team = Team(name=name)
        session.add(team)
        await session.flush()
    return team


async def create_api_key(
    session: AsyncSession, team_name: str, key_name: str | None = None, *, expires_at: int | None = None
) -> tuple[str, ApiKey]:
    """Create a key for the team (and the team if new); return the secret, shown only once."""
    team = await get_or_create_team(session, team_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(team_id=team.id, key_hash=hash_key(secret), prefix=secret[:10], name=key_name, expires_at=expires_at)
    session.add(key)
    await session.flush()
    return secret, key


@dataclass(frozen=True)
class PresentedKey:
    """The key a request presented, as its check needs it (live, revoked or expired: the caller tells)."""

    key_id: str
    team_id: str
    team_name: str
    revoked_at: int | None
    expires_at: int | None
    last_used_at: int | None


# The statements of the request path are built once: executing the same statement object again skips
# SQLAlchemy's per-execution matching of its columns to the cached compiled form.
_KEY_COLUMNS = (
    col(ApiKey.id),
    col(ApiKey.team_id),
    col(Team.name),
    col(ApiKey.revoked_at),
    col(ApiKey.expires_at),
    col(ApiKey.last_used_at),
)
_KEY_BY_HASH = (
    select_columns(*_KEY_COLUMNS)
    .join(Team, col(Team.id) == col(ApiKey.team_id))
    .where(col(ApiKey.key_hash) == bindparam("key_hash"))
)


async def authenticate(reads: PointReads, secret: str) -> PresentedKey | None:
    """The key a presented secret belongs to, with its team's name, or None.

    One statement, without a session or loaded rows, read from the database every time (a revocation
    holds from the next request on): it runs on every request.
    """
    row = await reads.first(_KEY_BY_HASH, {"key_hash": hash_key(secret)})
    if row is None:
        return None
    return PresentedKey(*row)


def _keys_with_teams() -> Select[ApiKey, Team]:
    return select(ApiKey, Team).join(Team, col(Team.id) == col(ApiKey.team_id))


async def note_key_used(session: AsyncSession, key_id: str, now: int, every_s: int) -> None:
    """Record a key's use, at most once every ``every_s`` seconds (one write a minute, not one a request)."""
    await session.exec(
        update(ApiKey)
        .where(
            col(ApiKey.id) == key_id,
            or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) <= now - every_s),
        )
        .values(last_used_at=now)
    )


async def list_api_keys(
    session: AsyncSession, team_id: str | None = None, *, include_revoked: bool = False
) -> list[tuple[ApiKey, Team]]:
    """Keys with their teams, newest first; revoked keys only when asked."""
    query = _keys_with_teams()
    if team_id is not None:
        query = query.where(ApiKey.team_id == team_id)
    if not include_revoked:
        query = query.where(col(ApiKey.revoked_at).is_(None))
    rows = (await session.exec(query.order_by(col(ApiKey.created_at).desc(), col(ApiKey.id)))).all()
    return [(key, team) for key, team in rows]


async def get_api_key(session: AsyncSession, key_id: str) -> tuple[ApiKey, Team] | None:
    """A key by its id (never its secret) with its team."""
    row = (await session.exec(_keys_with_teams().where(ApiKey.id == key_id))).first()
    return (row[0], row[1]) if row else None


async def revoke_api_key(session: AsyncSession, key_id: str, now: int) -> bool:
    """Revoke a key from now on (the next request presenting it is refused); False if it was already revoked."""
    result = await session.exec(
        update(ApiKey).where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None)).values(revoked_at=now)
    )
    return bool(result.rowcount)


# --- files ------------------------------------------------------------------------------------


async def get_file(session: AsyncSession, team_id: str, file_id: str) -> StoredFile | None:
    """A live file of this team."""
    return (
        await session.exec(
            select(StoredFile).where(
                StoredFile.id == file_id, StoredFile.team_id == team_id, col(StoredFile.deleted).is_(False)
            )
        )
    ).first()


async def list_files(
    session: AsyncSession,
    team_id: str,
    *,
    purpose: str | None,
    after: StoredFile | None,
    limit: int,
    descending: bool,
) -> list[StoredFile]:
    """A page of the team's files ordered by creation, starting after the cursor file (a message batch's own files
    left out: they are its requests and results, not the client's uploads)."""
    query = select(StoredFile).where(
        StoredFile.team_id == team_id, col(StoredFile.deleted).is_(False), col(StoredFile.held_by).is_(None)
    )
    if purpose:
        query = query.where(StoredFile.purpose == purpose)
    if after is not None and after.seq is not None:
        query = query.where(col(StoredFile.seq) < after.seq if descending else col(StoredFile.seq) > after.seq)
    order = col(StoredFile.seq).desc() if descending else col(StoredFile.seq).asc()
    return list((await session.exec(query.order_by(order).limit(limit))).all())


async def batch_holding_file(session: AsyncSession, team_id: str, file_id: str) -> str | None:
    """The id of the team's batch whose input, output or error file ``file_id`` is (the first found), if any."""
    query = select(Batch.id).where(
        Batch.team_id == team_id,
        or_(
            col(Batch.input_file_id) == file_id,
            col(Batch.output_file_id) == file_id,
            col(Batch.error_file_id) == file_id,
        ),
    )
    return (await session.exec(query.limit(1))).first()


async def file_in_use(session: AsyncSession, file_id: str) -> bool:
    """True while an unfinished batch reads this file."""
    running = ("validating", "in_progress", "finalizing", "cancelling")
    query = (
        select(func.count()).select_from(Batch).where(Batch.input_file_id == file_id, col(Batch.status).in_(running))
    )
    return bool((await session.exec(query)).one())


# --- batches ----------------------------------------------------------------------------------


_NOT_DELETED = col(Batch.deleted_at).is_(None)
"""A batch its client has not deleted: every read of a team's batches leaves the deleted out (an admin's keeps them)."""


async def get_batch(session: AsyncSession, team_id: str | None, batch_id: str) -> Batch | None:
    """A batch, restricted to one team's batches not deleted unless ``team_id`` is None (admin)."""
    query = select(Batch).where(Batch.id == batch_id)
    if team_id is not None:
        query = query.where(Batch.team_id == team_id, _NOT_DELETED)
    return (await session.exec(query)).first()


_BATCH_MAPPER = sa_inspect(Batch)
_BATCH_FIELDS = [attribute.key for attribute in _BATCH_MAPPER.column_attrs]
"""Attribute names of a batch row, in the order :data:`_BATCH_OF_TEAM` selects them (``metadata_`` is column
``metadata``)."""
_BATCH_OF_TEAM = select_columns(*(getattr(Batch, name) for name in _BATCH_FIELDS)).where(
    col(Batch.id) == bindparam("batch_id"), col(Batch.team_id) == bindparam("team_id"), _NOT_DELETED
)


class BatchView:
    """A batch row read for display only: the column attributes of :class:`Batch` as plain attributes.

    Not an ORM instance, so reading its ~35 attributes to render it skips the mapper's instrumentation
    (rendering it takes 4 us instead of 15 us); it is never added to a session."""


def _batch_view(values: Sequence[object]) -> Batch:
    view = BatchView()
    view.__dict__.update(zip(_BATCH_FIELDS, values, strict=True))
    return cast("Batch", view)  # it has every column attribute a Batch has, and is only read


async def read_batch(reads: PointReads, team_id: str, batch_id: str) -> Batch | None:
    """A batch of one team, read for display only (a :class:`BatchView`, never added to a session)."""
    row = await reads.first(_BATCH_OF_TEAM, {"batch_id": batch_id, "team_id": team_id})
    return None if row is None else _batch_view(row)


OpenShardWait = tuple[str, str | None, str | None, int]
"""``(state, wait_code, wait_detail, shards)``: how many unfinished shards of a batch are in ``state`` waiting for
``wait_code``, with the first ``wait_detail`` of theirs in text order (the same on every read)."""


OPEN_SHARD_GROUPS = (
    select(col(Shard.state), col(Shard.wait_code), func.min(col(Shard.wait_detail)), func.count())
    .add_columns(func.max(col(Shard.updated_at)))
    .where(col(Shard.batch_id) == bindparam("batch_id"), col(Shard.state) != bindparam("done"))
    .group_by(col(Shard.state), col(Shard.wait_code))
)
"""The unfinished shards of a batch grouped by state and wait code (:data:`OpenShardWait`, then the group's latest
``updated_at``): a few rows however many shards a batch has. Parameters ``batch_id``, and ``done`` = ``"done"`` (a
parameter too: a point read's statement holds no bound values, as :class:`PointReads` compiles it once, as is)."""

BatchVersion = tuple[float, int, float | None]
"""``(batch updated_at, open shards, their latest updated_at)``: what a status answer shows changes with it. Every
write of a field a Batch object shows stamps the batch's ``updated_at``, and every write of a shard's state or wait
stamps the shard's, so an answer read at one version holds while the version does."""

_OPEN_SHARDS = (col(Shard.batch_id) == col(Batch.id), col(Shard.state) != bindparam("done"))
_RUNNING = col(Batch.stage) != bindparam("done")
"""A finished batch's version counts no shards, as its answer reads none (and SQLite then runs no subquery)."""

_KEY_AND_BATCH = (
    select_columns(*_KEY_COLUMNS, *(getattr(Batch, name) for name in _BATCH_FIELDS))
    .join(Team, col(Team.id) == col(ApiKey.team_id))
    .join(Batch, col(Batch.team_id) == col(ApiKey.team_id))
    .where(col(ApiKey.key_hash) == bindparam("key_hash"), col(Batch.id) == bindparam("batch_id"), _NOT_DELETED)
)
_OPEN_GROUPS = OPEN_SHARD_GROUPS.subquery()
# One row per group of a running batch's open shards; one without a group for a finished batch. The groups are
# the batch's already (the same ``batch_id`` parameter as the batch's).
_KEY_BATCH_AND_GROUPS = _KEY_AND_BATCH.add_columns(*_OPEN_GROUPS.c).outerjoin(
    _OPEN_GROUPS, col(Batch.stage) != bindparam("done")
)


_KEY_AND_BATCH_VERSION = (
    select_columns(
        *_KEY_COLUMNS,
        col(Batch.updated_at),
        case((_RUNNING, select(func.count()).where(*_OPEN_SHARDS).scalar_subquery()), else_=literal_column("0")),
        case((_RUNNING, select(func.max(col(Shard.updated_at))).where(*_OPEN_SHARDS).scalar_subquery())),
    )
    .join(Team, col(Team.id) == col(ApiKey.team_id))
    .join(Batch, col(Batch.team_id) == col(ApiKey.team_id))
    .where(col(ApiKey.key_hash) == bindparam("key_hash"), col(Batch.id) == bindparam("batch_id"), _NOT_DELETED)
)


async def read_key_and_batch_version(
    reads: PointReads, secret: str, batch_id: str
) -> tuple[PresentedKey, BatchVersion] | None:
    """The key a presented secret belongs to and the version (:data:`BatchVersion`) of its team's batch
    ``batch_id``, in one statement: whether an answer kept for that batch still holds. None when the key is unknown
    or its team has no such batch."""
    parameters = {"key_hash": hash_key(secret), "batch_id": batch_id, "done": "done"}
    row = await reads.first(_KEY_AND_BATCH_VERSION, parameters)
    if row is None:
        return None
    width = len(_KEY_COLUMNS)
    updated, shards, latest = row[width:]
    return PresentedKey(*row[:width]), (float(updated), int(shards), None if latest is None else float(latest))


async def read_batch_with_key(
    reads: PointReads, secret: str, batch_id: str
) -> tuple[PresentedKey, Batch, list[OpenShardWait], BatchVersion] | None:
    """The key a presented secret belongs to, its team's batch ``batch_id`` (a :class:`BatchView`), while the
    batch runs its open shards' waits (grouped, :data:`OpenShardWait`), and the version of what was read
    (:data:`BatchVersion`). None when the key is unknown or its team has no such batch.

    Over a network (PostgreSQL) in one statement, a status read's one round trip. On a SQLite file, where a
    statement costs microseconds and the grouping would be paid by every read of a finished batch too, the open
    shards are read apart, and only while the batch runs."""
    parameters = {"key_hash": hash_key(secret), "batch_id": batch_id, "done": "done"}
    width, shard_at = len(_KEY_COLUMNS), len(_KEY_COLUMNS) + len(_BATCH_FIELDS)
    if reads.over_network:
        rows = await reads.all(_KEY_BATCH_AND_GROUPS, parameters)
        if not rows:
            return None
        batch = _batch_view(rows[0][width:shard_at])
        groups = [row[shard_at:] for row in rows if row[shard_at] is not None]
    else:
        row = await reads.first(_KEY_AND_BATCH, parameters)
        if row is None:
            return None
        rows, batch = [row], _batch_view(row[width:shard_at])
        groups = await reads.all(OPEN_SHARD_GROUPS, parameters) if batch.stage != "done" else []
    waits = [(str(state), code, detail, int(count)) for state, code, detail, count, _ in groups]
    latest = max((float(group[4]) for group in groups), default=None)
    version = (float(batch.updated_at), sum(wait[3] for wait in waits), latest)
    return PresentedKey(*rows[0][:width]), batch, waits, version


async def list_batches(
    session: AsyncSession,
    team_id: str | None,
    *,
    after: Batch | None,
    limit: int,
    statuses: Sequence[str] = (),
    provider: str | None = None,
    since: float | None = None,
) -> list[Batch]:
    """A page of batches, newest first, starting after the cursor batch.

    ``provider`` keeps batches with a shard on that provider; ``since`` those created at or after it.
    """
    query = select(Batch)
    if team_id is not None:
        query = query.where(Batch.team_id == team_id, _NOT_DELETED)
    if statuses:
        query = query.where(col(Batch.status).in_(statuses))
    if provider:
        query = query.where(("," + func.coalesce(col(Batch.providers), "") + ",").contains(f",{provider},"))
    if since is not None:
        query = query.where(col(Batch.created_at) >= since)
    if after is not None and after.seq is not None:
        query = query.where(col(Batch.seq) < after.seq)
    return list((await session.exec(query.order_by(col(Batch.seq).desc()).limit(limit))).all())


async def team_names(session: AsyncSession, team_ids: Sequence[str]) -> dict[str, str]:
    """Team names by id."""
    rows = (await session.exec(select(Team.id, Team.name).where(col(Team.id).in_(team_ids)))).all()
    return {team_id: name for team_id, name in rows}


async def request_cancel(session: AsyncSession, batch: Batch) -> bool:
    """Move a running batch to ``cancelling`` with one compare-and-set; False if it had finished.

    The shards are touched before the batch, the order in which workers lock them too (a shard,
    then its batch), so a cancel and a finishing shard never deadlock on PostgreSQL.
    """
    now = int(time.time())
    # Wake the batch's shards so the cancel reaches the providers at once (harmless if it fails).
    await session.exec(
        update(Shard)
        .where(col(Shard.batch_id) == batch.id, col(Shard.state) != "done")
        .values(next_action_at=time.time())
    )
    result = await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch.id, col(Batch.status).in_(("validating", "in_progress", "finalizing")))
        .values(status="cancelling", cancelling_at=now, updated_at=time.time())
    )
    return bool(result.rowcount)


# --- idempotency ------------------------------------------------------------------------------


async def find_idempotent(session: AsyncSession, team_id: str, kind: str, key: str) -> IdempotencyRecord | None:
    """The record a previous request with this key left."""
    return await session.get(IdempotencyRecord, (team_id, kind, key))


def add_idempotent(
    session: AsyncSession, team_id: str, kind: str, key: str, fingerprint: str, resource_id: str
) -> None:
    """Record that ``key`` created ``resource_id``; a concurrent first use of the key fails the commit
    with an ``IntegrityError`` (the table's primary key settles the race)."""
    session.add(
        IdempotencyRecord(team_id=team_id, kind=kind, key=key, fingerprint=fingerprint, resource_id=resource_id)
    )


# --- engine claims ----------------------------------------------------------------------------


async def claim_batch(session: AsyncSession, stages: Sequence[str], owner: str, lease_s: float) -> Batch | None:
    """Claim one due batch waiting in one of ``stages`` whose lease is free or expired.

    The claim is one compare-and-set UPDATE on a candidate id, so it is atomic on PostgreSQL and on SQLite
    alike: of two workers racing for a row, exactly one sees ``rowcount == 1`` (a candidate another worker
    took first matches no row and writes nothing). It also increments the row's fencing token (see
    :mod:`gateway.db.leases`). Run it in a unit of work of its own: the claim holds once that commits.
    """
    now = time.time()
    free = or_(col(Batch.lease_expires_at).is_(None), col(Batch.lease_expires_at) < now)
    due = (col(Batch.stage).in_(stages), col(Batch.next_action_at) <= now, free)
    candidates = (await session.exec(select(Batch.id).where(*due).order_by(col(Batch.seq)).limit(5))).all()
    for batch_id in candidates:
        result = await session.exec(
            update(Batch)
            .where(col(Batch.id) == batch_id, *due)
            .values(lease_owner=owner, lease_expires_at=now + lease_s, lease_token=col(Batch.lease_token) + 1)
        )
        if result.rowcount == 1:
            return await get_batch(session, None, batch_id)
    return None


async def release_batch(session: AsyncSession, batch_id: str, lease: Lease) -> None:
    """Give up this worker's lease (no-op once another worker holds the row)."""
    await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch_id, *lease.holds(Batch))
        .values(lease_owner=None, lease_expires_at=None)
    )


async def update_batch_if(
    session: AsyncSession,
    batch_id: str,
    *,
    expected_status: str,
    values: dict[str, object],
    lease: Lease | None = None,
) -> bool:
    """Update a batch only if its status is still ``expected_status`` (compare-and-set), and, with
    ``lease``, only while that lease is the batch's current one (a stage's fenced write)."""
    fence = lease.holds(Batch) if lease is not None else ()
    result = await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch_id, col(Batch.status) == expected_status, *fence)
        .values(**values, updated_at=time.time())
    )
    return bool(result.rowcount)


async def extend_batch_lease(session: AsyncSession, batch_id: str, lease: Lease) -> bool:
    """Heartbeat: push the lease forward if this worker still holds it."""
    result = await session.exec(
        update(Batch)
        .where(col(Batch.id) == batch_id, *lease.holds(Batch))
        .values(lease_expires_at=time.time() + lease.lease_s)
    )
    return bool(result.rowcount)


async def record_batch_failure(
    session: AsyncSession, batch_id: str, lease: Lease, entry: dict[str, object], retry_at: float | None
) -> bool:
    """Note a failed attempt of the batch's stage; with ``retry_at``, release the lease until then."""
    batch = await get_batch(session, None, batch_id)
    if batch is None:
        return False
    values: dict[str, object] = {
        "stage_attempts": batch.stage_attempts + 1,
        "attempt_log": [*(batch.attempt_log or [])[-(ATTEMPT_LOG_KEEP - 1) :], entry],
        "updated_at": time.time(),  # the batch's waiting reason names the failed attempt
    }
    if retry_at is not None:
        values |= {"next_action_at": retry_at, "lease_owner": None, "lease_expires_at": None}
    result = await session.exec(update(Batch).where(col(Batch.id) == batch_id, *lease.holds(Batch)).values(**values))
    return bool(result.rowcount)


# --- admin actions ----------------------------------------------------------------------------


async def get_file_any_team(session: AsyncSession, file_id: str) -> StoredFile | None:
    """A live file of any team (admin downloads)."""
    query = select(StoredFile).where(StoredFile.id == file_id, col(StoredFile.deleted).is_(False))
    return (await session.exec(query)).first()
