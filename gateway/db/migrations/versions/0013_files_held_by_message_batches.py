"""files held by message batches: a message batch's request and result files are not listed nor deletable
through the Files API (deleting them would empty its results)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 12:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_by", sa.String(length=32), nullable=True))
    # The files of message batches created before this revision.
    held = "SELECT b.{column} FROM batches b JOIN message_batches m ON m.batch_id = b.id WHERE b.{column} IS NOT NULL"
    columns = ("input_file_id", "output_file_id", "error_file_id")
    op.execute(
        "UPDATE files SET held_by = 'message_batch' WHERE "
        + " OR ".join(f"id IN ({held.format(column=column)})" for column in columns)
    )


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("held_by")
