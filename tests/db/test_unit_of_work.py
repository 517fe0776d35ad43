"""The unit of work commits a block that ends normally and rolls back one that raises (or asks to), on both
databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from gateway.context import GatewayContext
from gateway.db.models import Team
from gateway.db.unit_of_work import Rollback, on_rollback, reading, transaction
from gateway.settings import Settings
from tests.conftest import FreshDatabase, migrated_context


async def _exercise(context: GatewayContext) -> tuple[list[str], list[str]]:
    async with transaction(context.sessions) as session:
        session.add(Team(name="uow-commit"))
    with pytest.raises(RuntimeError, match="boom"):
        async with transaction(context.sessions) as session:
            session.add(Team(name="uow-rollback"))
            await session.flush()
            raise RuntimeError("boom")
    async with transaction(context.sessions) as session:
        session.add(Team(name="uow-discarded"))
        await session.flush()
        raise Rollback
    async with reading(context.sessions) as session:
        kept = (await session.exec(select(Team.name).where(Team.name == "uow-commit"))).all()
        dropped_names = ("uow-rollback", "uow-discarded")
        dropped = (await session.exec(select(Team.name).where(col(Team.name).in_(dropped_names)))).all()
    return list(kept), list(dropped)


def test_a_block_is_committed_when_it_ends_and_rolled_back_when_it_raises(database_kind: str, tmp_path: Path) -> None:
    database = FreshDatabase.create(database_kind, tmp_path, migrated=True)
    settings = Settings(data_dir=tmp_path, database_url=database.url)
    context = GatewayContext.create(settings)
    try:
        kept, dropped = asyncio.run(_exercise(context))
    finally:
        asyncio.run(context.close())
        database.drop()
    assert kept == ["uow-commit"]
    assert dropped == []


async def _undone(database_kind: str, tmp_path: Path) -> list[str]:
    undone: list[str] = []
    async with migrated_context(database_kind, tmp_path) as context:
        async with transaction(context.sessions) as session:
            session.add(Team(name="uow-taken"))
            on_rollback(session, lambda: undone.append("committed"))
        with pytest.raises(IntegrityError):
            async with transaction(context.sessions) as session:
                on_rollback(session, lambda: undone.append("first"))
                on_rollback(session, lambda: undone.append("second"))
                session.add(Team(name="uow-taken"))  # written by the commit, which the database refuses
        with pytest.raises(RuntimeError, match="boom"):
            async with transaction(context.sessions) as session:
                on_rollback(session, lambda: undone.append("raised"))
                raise RuntimeError("boom")
        async with transaction(context.sessions) as session:
            on_rollback(session, lambda: undone.append("rolled back"))
            raise Rollback
    return undone


def test_what_a_block_did_in_memory_is_undone_unless_it_commits(database_kind: str, tmp_path: Path) -> None:
    undone = asyncio.run(_undone(database_kind, tmp_path))
    assert undone == ["second", "first", "raised", "rolled back"], "a failed commit too; the last registered first"
