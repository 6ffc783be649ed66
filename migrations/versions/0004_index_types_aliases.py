"""Index types and memory, and index aliases (switched atomically to a new index version).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("indexes") as batch:
        batch.add_column(sa.Column("index_type", sa.String(10), nullable=False, server_default="flat"))
        batch.add_column(sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
    op.create_table(
        "index_aliases",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("index_id", sa.String(32), sa.ForeignKey("indexes.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("index_aliases")
    with op.batch_alter_table("indexes") as batch:
        batch.drop_column("memory_bytes")
        batch.drop_column("index_type")
