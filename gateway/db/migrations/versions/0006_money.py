"""money: reservations that follow reality, canary holds, cache token prices, learned output estimates

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "output_token_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("estimated_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("histogram", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("team_id", "model", "endpoint"),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("projected_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("hold_reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("hold_detail", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("canary_projected_usd", sa.Float(), nullable=True))
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cached_input_per_mtok", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cache_write_per_mtok", sa.Float(), nullable=True))
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("cache_write_tokens")
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.drop_column("cache_write_per_mtok")
        batch_op.drop_column("cached_input_per_mtok")
        batch_op.drop_column("cache_write_tokens")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("canary_projected_usd")
        batch_op.drop_column("hold_detail")
        batch_op.drop_column("hold_reason")
        batch_op.drop_column("projected_cost_usd")
    op.drop_table("output_token_stats")
