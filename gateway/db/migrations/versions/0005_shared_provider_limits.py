"""shared provider limits: the request timeline of each provider and the 429 pause

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_pacing",
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("next_free_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider"),
    )
    with op.batch_alter_table("provider_health", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limited_until", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("provider_health", schema=None) as batch_op:
        batch_op.drop_column("rate_limited_until")
    op.drop_table("provider_pacing")
