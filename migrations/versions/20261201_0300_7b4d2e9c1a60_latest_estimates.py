"""latest_estimates: one row per stream with what /metrics exports from its latest estimate, and a
partial index over labeled estimates; backfilled from the estimates table

Revision ID: 7b4d2e9c1a60
Revises: 5e7a1c2b9d30
Create Date: 2026-12-01 03:00:00
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "7b4d2e9c1a60"
down_revision: str | Sequence[str] | None = "5e7a1c2b9d30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "latest_estimates",
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("estimate_id", sa.Uuid(), nullable=False),
        sa.Column("window_index", sa.Integer(), nullable=False),
        sa.Column("estimated_accuracy", sa.Float(), nullable=False),
        sa.Column("weighted_flips", sa.Float(), nullable=True),
        sa.Column("series", sa.JSON(), nullable=True),
        sa.Column("last_estimate_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["estimate_id"],
            ["estimates.id"],
            name=op.f("fk_latest_estimates_estimate_id_estimates"),
        ),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_latest_estimates_stream_id_streams")
        ),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_latest_estimates")),
    )
    with op.batch_alter_table("latest_estimates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_latest_estimates_estimate_id"), ["estimate_id"], unique=False
        )
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_estimates_stream_id_window_index_realized",
            ["stream_id", "window_index"],
            unique=False,
            postgresql_where=sa.text("realized_accuracy IS NOT NULL"),
            sqlite_where=sa.text("realized_accuracy IS NOT NULL"),
        )
    backfill()


def backfill() -> None:
    """One row per stream that has estimates: its highest window's values and newest created_at.

    The result-derived values go through the service's `latest_series`, the function the
    estimate job uses, so the backfilled rows equal what the job would have written.
    """
    from flipwatch.service.estimate.latest import latest_series

    bind = op.get_bind()
    estimates = sa.table(
        "estimates",
        sa.column("id", sa.Uuid()),
        sa.column("stream_id", sa.Uuid()),
        sa.column("window_index", sa.Integer()),
        sa.column("estimated_accuracy", sa.Float()),
        sa.column("weighted_flips", sa.Float()),
        sa.column("result", sa.JSON()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    latest = sa.table(
        "latest_estimates",
        sa.column("stream_id", sa.Uuid()),
        sa.column("estimate_id", sa.Uuid()),
        sa.column("window_index", sa.Integer()),
        sa.column("estimated_accuracy", sa.Float()),
        sa.column("weighted_flips", sa.Float()),
        sa.column("series", sa.JSON()),
        sa.column("last_estimate_at", sa.DateTime(timezone=True)),
    )
    newest = (
        sa.select(
            estimates.c.stream_id,
            sa.func.max(estimates.c.window_index).label("window_index"),
            sa.func.max(estimates.c.created_at).label("last_at"),
        )
        .group_by(estimates.c.stream_id)
        .subquery()
    )
    rows = bind.execute(
        sa.select(
            estimates.c.id,
            estimates.c.stream_id,
            estimates.c.window_index,
            estimates.c.estimated_accuracy,
            estimates.c.weighted_flips,
            estimates.c.result,
            newest.c.last_at,
        ).join(
            newest,
            sa.and_(
                estimates.c.stream_id == newest.c.stream_id,
                estimates.c.window_index == newest.c.window_index,
            ),
        )
    )
    batch: list[dict[str, Any]] = []
    for row in rows:
        result = json.loads(row.result) if isinstance(row.result, str) else row.result
        batch.append(
            {
                "stream_id": row.stream_id,
                "estimate_id": row.id,
                "window_index": row.window_index,
                "estimated_accuracy": row.estimated_accuracy,
                "weighted_flips": row.weighted_flips,
                "series": latest_series(result),
                "last_estimate_at": row.last_at,
            }
        )
    if batch:
        bind.execute(sa.insert(latest), batch)


def downgrade() -> None:
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_estimates_stream_id_window_index_realized",
            postgresql_where=sa.text("realized_accuracy IS NOT NULL"),
            sqlite_where=sa.text("realized_accuracy IS NOT NULL"),
        )
    with op.batch_alter_table("latest_estimates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_latest_estimates_estimate_id"))
    op.drop_table("latest_estimates")
