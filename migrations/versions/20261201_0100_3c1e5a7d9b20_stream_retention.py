"""stream retention

Revision ID: 3c1e5a7d9b20
Revises: fba7df68b359
Create Date: 2026-12-01 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "3c1e5a7d9b20"
down_revision: str | Sequence[str] | None = "fba7df68b359"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retain_images", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("retain_days", sa.Float(), nullable=True))
        batch_op.create_check_constraint(
            op.f("ck_streams_retain_images_positive"), "retain_images IS NULL OR retain_images >= 1"
        )
        batch_op.create_check_constraint(
            op.f("ck_streams_retain_days_positive"), "retain_days IS NULL OR retain_days > 0"
        )


def downgrade() -> None:
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_streams_retain_days_positive"), type_="check")
        batch_op.drop_constraint(op.f("ck_streams_retain_images_positive"), type_="check")
        batch_op.drop_column("retain_days")
        batch_op.drop_column("retain_images")
