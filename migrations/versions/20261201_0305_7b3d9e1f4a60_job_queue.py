"""job queue: the capability queue (estimates.gpu, estimates.cpu, calibrations) of each job

Revision ID: 7b3d9e1f4a60
Revises: e00b9878da1b
Create Date: 2026-12-01 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "7b3d9e1f4a60"
down_revision: str | Sequence[str] | None = "e00b9878da1b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "queue", sa.String(length=64), server_default="estimates.gpu", nullable=False
            )
        )
    # Jobs created before queues existed: calibrations to their own queue, estimates to the GPU
    # queue (a worker without --queues consumes every queue, as before).
    op.execute("UPDATE jobs SET queue = 'calibrations' WHERE kind = 'calibrate'")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("queue")
