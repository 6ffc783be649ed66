"""Aliases may name a model as well as an index: a nullable model_id, index_id nullable, exactly one set.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_TARGET = "(index_id IS NULL) <> (model_id IS NULL)"


def upgrade() -> None:
    with op.batch_alter_table("index_aliases") as batch:
        batch.add_column(sa.Column("model_id", sa.String(64), nullable=True))
        batch.alter_column("index_id", existing_type=sa.String(32), nullable=True)
        batch.create_foreign_key("fk_index_aliases_model_id", "models", ["model_id"], ["id"], ondelete="RESTRICT")
        batch.create_check_constraint("ck_index_aliases_one_target", ONE_TARGET)


def downgrade() -> None:
    op.execute("DELETE FROM index_aliases WHERE index_id IS NULL")
    with op.batch_alter_table("index_aliases") as batch:
        batch.drop_constraint("ck_index_aliases_one_target", type_="check")
        batch.drop_constraint("fk_index_aliases_model_id", type_="foreignkey")
        batch.alter_column("index_id", existing_type=sa.String(32), nullable=False)
        batch.drop_column("model_id")
