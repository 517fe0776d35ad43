"""fencing tokens, stage attempts, waiting reasons, abandoned provider batches

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 22:54:52.326808
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "abandoned_provider_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shard_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("batch_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("team_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("api_key_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("provider_model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("submit_token", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider_batch_id", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
        sa.Column("origin", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("cancel_sent_at", sa.Float(), nullable=True),
        sa.Column("provider_status", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("requests_billed", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("input_per_mtok", sa.Float(), nullable=False),
        sa.Column("output_per_mtok", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_action_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("lease_token", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("settled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "submit_token"),
    )
    with op.batch_alter_table("abandoned_provider_batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_abandoned_provider_batches_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_abandoned_provider_batches_shard_id"), ["shard_id"], unique=False)
        batch_op.create_index("ix_abandoned_state_due", ["state", "next_action_at"], unique=False)

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_token", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_action_at", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("stage_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("attempt_log", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("abandoned_cost_usd", sa.Float(), nullable=False, server_default="0"))

    # The ledger keeps one row per shard and kind ("served", "abandoned"): replace the unique shard_id.
    if op.get_context().dialect.name == "sqlite":
        naming = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
        with op.batch_alter_table("ledger", naming_convention=naming) as batch_op:
            batch_op.drop_constraint("uq_ledger_shard_id", type_="unique")
    else:
        op.drop_constraint("ledger_shard_id_key", "ledger", type_="unique")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="served")
        )
        batch_op.create_unique_constraint("uq_ledger_shard_kind", ["shard_id", "kind"])

    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wait_code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("wait_detail", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stage_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("attempt_log", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("lease_token", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.drop_column("lease_token")
        batch_op.drop_column("attempt_log")
        batch_op.drop_column("stage_attempts")
        batch_op.drop_column("wait_detail")
        batch_op.drop_column("wait_code")

    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_constraint("uq_ledger_shard_kind", type_="unique")
        batch_op.drop_column("kind")
        batch_op.create_unique_constraint("ledger_shard_id_key", ["shard_id"])

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("abandoned_cost_usd")
        batch_op.drop_column("attempt_log")
        batch_op.drop_column("stage_attempts")
        batch_op.drop_column("next_action_at")
        batch_op.drop_column("lease_token")

    with op.batch_alter_table("abandoned_provider_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_abandoned_state_due")
        batch_op.drop_index(batch_op.f("ix_abandoned_provider_batches_shard_id"))
        batch_op.drop_index(batch_op.f("ix_abandoned_provider_batches_batch_id"))

    op.drop_table("abandoned_provider_batches")
