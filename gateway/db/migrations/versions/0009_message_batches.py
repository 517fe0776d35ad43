"""message batches: batches created through the Anthropic-compatible endpoint

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_batches",
        sa.Column("batch_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("team_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("intake_errors", sa.Integer(), nullable=False),
        sa.Column("intake_errors_key", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("deleted_at", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"]),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"]),
        sa.PrimaryKeyConstraint("batch_id"),
    )
    op.create_index(op.f("ix_message_batches_team_id"), "message_batches", ["team_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_message_batches_team_id"), table_name="message_batches")
    op.drop_table("message_batches")
