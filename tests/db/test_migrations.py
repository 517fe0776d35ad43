"""Migrations: an empty database upgrades to head, and the models match the migrated schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import gateway.db.models  # noqa: F401
from gateway.db.engine import sync_url, upgrade_to_head
from gateway.settings import async_database_url
from tests.conftest import FreshDatabase


def test_upgrade_to_head_matches_models(database_kind: str, tmp_path: Path) -> None:
    database = FreshDatabase.create(database_kind, tmp_path)
    try:
        url = async_database_url(database.url)
        upgrade_to_head(url)
        engine = create_engine(sync_url(url))
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            assert {"teams", "api_keys", "files", "batches", "shards", "idempotency_keys"} <= tables
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, SQLModel.metadata)
        engine.dispose()
        assert differences == []
        upgrade_to_head(url)  # a second upgrade is a no-op
    finally:
        database.drop()
