"""routing decisions, provider health, ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 00:53:17.438675
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shard_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("batch_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("team_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("api_key_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("provider_model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("list_cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shard_id"),
    )
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ledger_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_ledger_team_time", ["team_id", "created_at"], unique=False)

    op.create_table(
        "provider_health",
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("circuit", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=True),
        sa.Column("probe_until", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_failure_at", sa.Float(), nullable=True),
        sa.Column("last_success_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider"),
    )
    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("shard_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("policy", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("chosen_provider", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=True),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routing_decisions_batch_id"), ["batch_id"], unique=False)

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("estimated_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("list_cost_usd", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("providers", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True))

    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False, server_default="batch")
        )
        batch_op.add_column(sa.Column("parent_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("canary", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("result_moved", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("estimated_output_tokens", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("input_per_mtok", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("output_per_mtok", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("list_input_per_mtok", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("list_output_per_mtok", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("estimated_cost_usd", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_progress_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("unavailable_since", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.drop_column("unavailable_since")
        batch_op.drop_column("last_progress_at")
        batch_op.drop_column("estimated_cost_usd")
        batch_op.drop_column("list_output_per_mtok")
        batch_op.drop_column("list_input_per_mtok")
        batch_op.drop_column("output_per_mtok")
        batch_op.drop_column("input_per_mtok")
        batch_op.drop_column("estimated_output_tokens")
        batch_op.drop_column("result_moved")
        batch_op.drop_column("canary")
        batch_op.drop_column("pinned")
        batch_op.drop_column("generation")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("mode")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("providers")
        batch_op.drop_column("list_cost_usd")
        batch_op.drop_column("cost_usd")
        batch_op.drop_column("estimated_cost_usd")
        batch_op.drop_column("policy")

    with op.batch_alter_table("routing_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_decisions_batch_id"))

    op.drop_table("routing_decisions")
    op.drop_table("provider_health")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_team_time")
        batch_op.drop_index(batch_op.f("ix_ledger_created_at"))
        batch_op.drop_index(batch_op.f("ix_ledger_batch_id"))

    op.drop_table("ledger")
