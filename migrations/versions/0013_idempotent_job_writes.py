"""A worker's buffered writes can be sent again without landing twice.

A metric point is unique per (job, step, name, split), so the worker upserts it; an event may carry a
key made in the worker, so a flush whose commit was cut after the server applied it inserts nothing new.
Existing duplicates (a run restarted before its first checkpoint wrote step 0 twice) keep their first row.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM metric_points WHERE id NOT IN "
        "(SELECT MIN(id) FROM metric_points GROUP BY job_id, step, name, split)"
    )
    op.create_index("uq_metric_points_point", "metric_points", ["job_id", "step", "name", "split"], unique=True)
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("key", sa.String(32), nullable=True))
    op.create_index("uq_job_events_key", "job_events", ["key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_job_events_key", table_name="job_events")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("key")
    op.drop_index("uq_metric_points_point", table_name="metric_points")
