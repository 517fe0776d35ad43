"""output expiry and deletion: how long a batch's output and error files are kept (its ``output_expires_after``),
and when its client deleted it (a Message Batches delete)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 09:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("output_ttl_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", sa.Integer(), nullable=True))
    # Message batches deleted before this revision: their batches are deleted too.
    op.execute(
        "UPDATE batches SET deleted_at = (SELECT m.deleted_at FROM message_batches m WHERE m.batch_id = batches.id) "
        "WHERE id IN (SELECT batch_id FROM message_batches WHERE deleted_at IS NOT NULL)"
    )


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("output_ttl_s")
