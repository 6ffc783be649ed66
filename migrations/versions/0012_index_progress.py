"""Index builds report progress: passages encoded so far.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("indexes") as batch:
        batch.add_column(sa.Column("docs_encoded", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("indexes") as batch:
        batch.drop_column("docs_encoded")
