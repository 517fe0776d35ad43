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


def test_the_files_of_message_batches_made_before_0013_are_marked_held(database_kind: str, tmp_path: Path) -> None:
    database = FreshDatabase.create(database_kind, tmp_path)
    try:
        url = async_database_url(database.url)
        command.upgrade(alembic_config(url), "0012")
        engine = create_engine(sync_url(url))
        batch_columns = (
            "id, team_id, input_file_id, output_file_id, error_file_id, endpoint, completion_window, status, "
            "created_at, request_total, request_completed, request_failed, input_tokens, output_tokens, "
            "cached_tokens, reasoning_tokens, stage, updated_at"
        )
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO teams (id, name, created_at) VALUES ('acme', 'acme', 0)"))
            for file_id in ("file-in", "file-out", "file-err", "file-own-in", "file-own-out"):
                connection.execute(
                    text(
                        "INSERT INTO files (id, team_id, filename, purpose, bytes, created_at, status, storage_key, "
                        "deleted) VALUES (:id, 'acme', 'x.jsonl', 'batch', 1, 0, 'processed', :id, false)"
                    ),
                    {"id": file_id},
                )
            runs = {"batch_m": ("file-in", "file-out", "file-err"), "batch_o": ("file-own-in", "file-own-out", None)}
            for batch_id, files in runs.items():
                connection.execute(
                    text(
                        f"INSERT INTO batches ({batch_columns}) VALUES (:id, 'acme', :input, :output, :error, "
                        "'/v1/chat/completions', '24h', 'completed', 0, 1, 1, 0, 0, 0, 0, 0, 'done', 0)"
                    ),
                    {"id": batch_id, "input": files[0], "output": files[1], "error": files[2]},
                )
            connection.execute(
                text(
                    "INSERT INTO message_batches (batch_id, team_id, request_count, intake_errors) "
                    "VALUES ('batch_m', 'acme', 1, 0)"
                )
            )
        upgrade_to_head(url)
        with engine.connect() as connection:
            held = {row[0]: row[1] for row in connection.execute(text("SELECT id, held_by FROM files"))}
        engine.dispose()
        message_batch_files = dict.fromkeys(("file-in", "file-out", "file-err"), "message_batch")
        assert held == message_batch_files | {"file-own-in": None, "file-own-out": None}
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
