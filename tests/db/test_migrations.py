"""Migrations: an empty database upgrades to head (a gateway upgrades it as it starts), and the models match the
migrated schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import gateway.db.models  # noqa: F401
from gateway.db.engine import HEAD_REVISION, alembic_config, at_head, sync_url, upgrade_to_head
from gateway.settings import async_database_url
from tests.conftest import FreshDatabase, GatewayProcess


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


def test_the_head_revision_the_start_checks_is_alembics_head(tmp_path: Path) -> None:
    scripts = ScriptDirectory.from_config(alembic_config(f"sqlite:///{tmp_path / 'any.db'}"))
    assert scripts.get_heads() == [HEAD_REVISION], "a new migration: set HEAD_REVISION in gateway/db/engine.py"


def test_only_a_database_at_head_skips_the_migrations(database_kind: str, tmp_path: Path) -> None:
    database = FreshDatabase.create(database_kind, tmp_path)
    try:
        url = async_database_url(database.url)
        assert not at_head(url), "an empty database is not at head"
        upgrade_to_head(url)
        assert at_head(url)
        command.downgrade(alembic_config(url), "-1")
        assert not at_head(url), "a database one migration behind is not at head"
        upgrade_to_head(url)  # so the start runs the missing migration
        engine = create_engine(sync_url(url))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        engine.dispose()
        assert at_head(url)
    finally:
        database.drop()


def test_a_gateway_started_on_an_empty_database_migrates_it_before_it_is_ready(
    gateway_factory: Any, database_kind: str, tmp_path: Path
) -> None:
    database = FreshDatabase.create(database_kind, tmp_path)
    url = async_database_url(database.url)
    assert not at_head(url)
    gateway: GatewayProcess = gateway_factory(database=database)
    try:
        gateway.start()
        assert at_head(url)
        assert gateway.create_key("acme").startswith("bgw-")  # through the admin API: the tables are there
    finally:
        gateway.stop()
        database.drop()


def test_a_migrated_copy_for_the_tests_gateways_is_the_migrated_schema(database_kind: str, tmp_path: Path) -> None:
    """The tests' gateways start on copies of one migrated database (tests/conftest.py): the copy must be that."""
    database = FreshDatabase.create(database_kind, tmp_path, migrated=True)
    try:
        url = async_database_url(database.url)
        assert at_head(url)
        engine = create_engine(sync_url(url))
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, SQLModel.metadata) == []
            assert connection.execute(text("SELECT count(*) FROM batches")).scalar() == 0
        engine.dispose()
    finally:
        database.drop()
