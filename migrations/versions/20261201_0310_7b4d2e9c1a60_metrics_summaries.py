"""metrics summaries: latest_estimates (one row per stream with what /metrics exports from its
latest estimate), job_counts (jobs per stream, model and state, kept by triggers on jobs) and a
partial index over labeled estimates; both tables backfilled

Revision ID: 7b4d2e9c1a60
Revises: 7b3d9e1f4a60
Create Date: 2026-12-01 03:00:00
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "7b4d2e9c1a60"
down_revision: str | Sequence[str] | None = "7b3d9e1f4a60"
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
            postgresql_include=["estimated_accuracy", "realized_accuracy"],
            postgresql_where=sa.text("realized_accuracy IS NOT NULL"),
            sqlite_where=sa.text("realized_accuracy IS NOT NULL"),
        )
    backfill()
    op.create_table(
        "job_counts",
        sa.Column("stream_key", sa.Uuid(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_job_counts_model_id_models")
        ),
        sa.PrimaryKeyConstraint("stream_key", "model_id", "state", name=op.f("pk_job_counts")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for statement in POSTGRES_TRIGGERS:
            op.execute(statement)
        nil = "'00000000-0000-0000-0000-000000000000'::uuid"
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
        nil = f"'{SQLITE_NIL}'"
    op.execute(
        "INSERT INTO job_counts (stream_key, model_id, state, jobs) "
        f"SELECT coalesce(stream_id, {nil}), model_id, state, count(*) FROM jobs "
        f"GROUP BY coalesce(stream_id, {nil}), model_id, state"
    )


# Jobs without a stream (calibrations) count under the nil UUID (tables.NO_STREAM).
# Postgres: one row trigger; an update touches its two counts in key order, so two transactions
# moving jobs of one stream lock them in the same order.
POSTGRES_TRIGGERS = (
    """
    CREATE FUNCTION flipwatch_add_job_count(k uuid, m uuid, s varchar, d integer)
    RETURNS void LANGUAGE sql AS $$
        INSERT INTO job_counts (stream_key, model_id, state, jobs) VALUES (k, m, s, d)
        ON CONFLICT (stream_key, model_id, state) DO UPDATE SET jobs = job_counts.jobs + d
    $$
    """,
    """
    CREATE FUNCTION flipwatch_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        nil CONSTANT uuid := '00000000-0000-0000-0000-000000000000';
        old_key uuid;
        new_key uuid;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM flipwatch_add_job_count(coalesce(NEW.stream_id, nil), NEW.model_id,
                                            NEW.state, 1);
            RETURN NULL;
        END IF;
        old_key := coalesce(OLD.stream_id, nil);
        IF TG_OP = 'DELETE' THEN
            PERFORM flipwatch_add_job_count(old_key, OLD.model_id, OLD.state, -1);
            RETURN NULL;
        END IF;
        new_key := coalesce(NEW.stream_id, nil);
        IF (old_key, OLD.model_id, OLD.state) = (new_key, NEW.model_id, NEW.state) THEN
            RETURN NULL;
        END IF;
        IF (old_key, OLD.model_id, OLD.state) < (new_key, NEW.model_id, NEW.state) THEN
            PERFORM flipwatch_add_job_count(old_key, OLD.model_id, OLD.state, -1);
            PERFORM flipwatch_add_job_count(new_key, NEW.model_id, NEW.state, 1);
        ELSE
            PERFORM flipwatch_add_job_count(new_key, NEW.model_id, NEW.state, 1);
            PERFORM flipwatch_add_job_count(old_key, OLD.model_id, OLD.state, -1);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER jobs_count AFTER INSERT OR DELETE OR UPDATE OF state, stream_id, model_id
    ON jobs FOR EACH ROW EXECUTE FUNCTION flipwatch_count_jobs()
    """,
)
# SQLite stores a Uuid as 32 hex digits; writers are serialised, so lock order does not matter.
SQLITE_NIL = "0" * 32
_SQLITE_ADD = (
    "INSERT INTO job_counts (stream_key, model_id, state, jobs) "
    "VALUES (coalesce(NEW.stream_id, '{nil}'), NEW.model_id, NEW.state, 1) "
    "ON CONFLICT (stream_key, model_id, state) DO UPDATE SET jobs = jobs + 1;"
).format(nil=SQLITE_NIL)
_SQLITE_REMOVE = (
    "UPDATE job_counts SET jobs = jobs - 1 WHERE stream_key = coalesce(OLD.stream_id, '{nil}') "
    "AND model_id = OLD.model_id AND state = OLD.state;"
).format(nil=SQLITE_NIL)
SQLITE_TRIGGERS = (
    f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN {_SQLITE_ADD} END",
    f"CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN {_SQLITE_REMOVE} END",
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, stream_id, model_id ON jobs "
    "WHEN OLD.state IS NOT NEW.state OR OLD.stream_id IS NOT NEW.stream_id "
    f"OR OLD.model_id IS NOT NEW.model_id BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END",
)


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
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER jobs_count ON jobs")
        op.execute("DROP FUNCTION flipwatch_count_jobs()")
        op.execute("DROP FUNCTION flipwatch_add_job_count(uuid, uuid, varchar, integer)")
    else:
        for name in ("jobs_count_insert", "jobs_count_delete", "jobs_count_update"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("job_counts")
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_estimates_stream_id_window_index_realized",
            postgresql_where=sa.text("realized_accuracy IS NOT NULL"),
            sqlite_where=sa.text("realized_accuracy IS NOT NULL"),
        )
    with op.batch_alter_table("latest_estimates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_latest_estimates_estimate_id"))
    op.drop_table("latest_estimates")
