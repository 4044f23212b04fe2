"""realized accuracy (image predictions and labels, per-window realized accuracy), job request id

Revision ID: 5e7a1c2b9d30
Revises: 3c1e5a7d9b20
Create Date: 2026-12-01 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "5e7a1c2b9d30"
down_revision: str | Sequence[str] | None = "3c1e5a7d9b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("predicted_label", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("label", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("labeled_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("realized_accuracy", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("realized_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("request_id")
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.drop_column("realized_at")
        batch_op.drop_column("realized_accuracy")
        batch_op.drop_column("labeled_count")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("labeled_at")
        batch_op.drop_column("label")
        batch_op.drop_column("predicted_label")
