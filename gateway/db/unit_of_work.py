"""One place that owns transactions: a unit of work opens a session, commits on success, rolls back on error.

Callers never call ``session.commit()`` themselves: they write inside ``async with transaction(sessions)``
and the block's end is the commit point. A block that must publish a change before an outside effect
(the "database before the world" rule of the pipeline) simply ends before that effect and opens a new
unit of work afterwards. A block that finds its work must not be kept (a fenced write matched no row)
raises :class:`Rollback`: its work is rolled back and the code after the block runs. Read-only callers use
:func:`reading`, which never commits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession


class Rollback(Exception):
    """Raised in a :func:`transaction` block to roll its work back and leave the block without an error."""


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed when the block ends normally and rolled back when it raises
    (quietly for :class:`Rollback`)."""
    async with sessions() as session:
        try:
            yield session
        except Rollback:
            await session.rollback()
            _undo(session)
            return
        except BaseException:
            await session.rollback()
            _undo(session)
            raise
        try:
            await session.commit()
        except BaseException:
            _undo(session)
            raise
        session.info.pop(_UNDO, None)


@asynccontextmanager
async def reading(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reads only: nothing it does is committed."""
    async with sessions() as session:
        yield session


_UNDO = "batchgw_undo"


def on_rollback(session: AsyncSession, undo: Callable[[], None]) -> None:
    """Run ``undo`` if the :func:`transaction` of ``session`` does not commit (an error later in the unit of work,
    a failed commit), after those registered later (last in, first out): for in-memory copies of what it wrote,
    which must go back to what the database still holds."""
    session.info.setdefault(_UNDO, []).append(undo)


def _undo(session: AsyncSession) -> None:
    for undo in reversed(session.info.pop(_UNDO, [])):
        undo()
