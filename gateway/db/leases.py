"""Leases with fencing tokens: the proof a worker still owns the row it works on.

Every claim of a batch or shard row sets its ``lease_owner`` and increments its ``lease_token``.
A worker keeps the :class:`Lease` it got and conditions every write of its stage on both
(:meth:`Lease.holds`): once another worker has claimed the row (a new token), the old worker's writes
match no row, so a worker that was frozen past its lease and wakes up can finish, publish or delete
nothing. Blobs a stage writes carry the token in their names, so two attempts never share a blob.

A holder's schedule never undoes a wake-up that came while it held the row (:func:`keeping_wakeups`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, literal
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db.unit_of_work import on_rollback


@dataclass
class Lease:
    """One claim on one row: who holds it, with which fencing token, and since when it was renewed."""

    owner: str
    token: int
    lease_s: float
    renewed_at: float = field(default_factory=time.monotonic)
    """When the lease was last known to start: take it (``time.monotonic()``) before the claim or renewal is
    sent, never after its answer, so a process frozen between the commit and the answer wakes with a stale
    lease rather than one that looks fresh while the database's has run out."""
    lost: bool = False
    """Set once a heartbeat found the row claimed by someone else (or this process too late to renew)."""
    kept_on_stop: bool = False
    """Set while a provider call whose outcome is not yet recorded may be under way (a create): a worker that
    stops then leaves this lease to expire, as a killed one would, rather than releasing it at once, so the
    next owner looks the call's result up (by its tag) only once the provider has had time to settle it."""

    def holds(self, table: Any) -> tuple[Any, Any]:
        """WHERE conditions true only while this lease is the row's current one."""
        return col(table.lease_owner) == self.owner, col(table.lease_token) == self.token

    def renewed(self, sent_at: float) -> None:
        """Note a successful heartbeat whose renewal was sent at ``sent_at`` (``time.monotonic()``)."""
        self.renewed_at = sent_at

    @property
    def stale(self) -> bool:
        """True when the lease is lost or has not been renewed within its length (the process was frozen)."""
        return self.lost or time.monotonic() - self.renewed_at >= self.lease_s


class LeaseLost(Exception):
    """This worker no longer holds the row's lease: the stage must stop without writing anything."""


def keeping_wakeups(table: Any, last_known: float | None, asked: float) -> ColumnElement[float]:
    """What a lease holder writes as the row's ``next_action_at``: ``asked``, unless the row's value changed
    since the holder last read or wrote it (``last_known``) to an earlier time, which is then kept. Someone
    woke the row meanwhile (a provider webhook, a budget stop): the wake-up stands until a step claimed after
    it has run, instead of being undone by the schedule of the step that was running when it came."""
    current = col(table.next_action_at)
    woken = and_(current != last_known, current < asked)
    return case((woken, current), else_=literal(asked))


def mirror_write(session: AsyncSession, row: Any, values: Mapping[str, Any]) -> None:
    """Copy a fenced write's ``values`` onto the holder's in-memory ``row``, and back to what they were if the
    unit of work then rolls back: :func:`keeping_wakeups` compares with the row's in-memory
    ``next_action_at``, so a value the database never kept must not stay there (it would look like a
    wake-up, and cut the holder's next back-off short)."""
    before = {name: getattr(row, name) for name in values}
    for name, value in values.items():
        setattr(row, name, value)

    def undo() -> None:
        for name, value in before.items():
            setattr(row, name, value)

    on_rollback(session, undo)
