"""ORM tables. Column names are a contract with the worker side (workers/jobs/): keep them stable.

Conventions: plural snake_case tables, UUID primary keys, timezone-aware UTC timestamps, `JSON` for
documents (works on SQLite and Postgres), string states guarded by CHECK constraints.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from flipwatch.service.core.db import Base

ROLES = ("admin", "ingest", "read")
JOB_KINDS = ("estimate", "calibrate")
JOB_STATES = ("queued", "running", "succeeded", "failed")
CALIBRATION_STATES = JOB_STATES


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that always hands back aware UTC datetimes.

    SQLite stores no offset, so values read back would otherwise be naive there, aware on Postgres.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use flipwatch.service.core.tables.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ApiKey(Base):
    """A bearer token, stored as sha256(token); `prefix` finds the row without scanning."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Model(Base):
    """A registered classifier version; re-registering a name creates version + 1."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    # The ModelSpec as JSON, with `weights` set to the weights' storage key (`models/<sha256>.pt`,
    # core/storage.py); `weights_path` holds the same key.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_path: Mapped[str] = mapped_column(String(1024))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Calibration(Base):
    """A calibration run for one model from a labeled reference set (an ImageFolder tree)."""

    __tablename__ = "calibrations"
    __table_args__ = (CheckConstraint(_in("state", CALIBRATION_STATES), name="state"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"), index=True)
    # Plain column (no FK): jobs.calibration_id already points here, and a cycle buys nothing.
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # Storage key prefix of the uploaded ImageFolder root (`calibrations/<id>/...`, class folders
    # directly below it), without the trailing '/'.
    reference_path: Mapped[str] = mapped_column(String(1024))
    reference_images: Mapped[int] = mapped_column(Integer, default=0)
    reference_classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Per-request suite and trajectory: {"steps": int, "families": [...], "severities": [...]};
    # keys left out fall back to the deployment's Settings.
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    # Calibration.to_dict() from the estimator once succeeded.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reference_accuracy: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Stream(Base):
    """A named data source bound to a model, with its window policy and window position.

    Images fill `current_window_index`; `window_fill` counts its images. A window closes when it
    reaches `window_size`, or early when an on-demand estimate takes it.
    """

    __tablename__ = "streams"
    __table_args__ = (
        CheckConstraint("window_size >= 1", name="window_size_positive"),
        CheckConstraint("steps >= 1", name="steps_positive"),
        CheckConstraint(
            "retain_images IS NULL OR retain_images >= 1", name="retain_images_positive"
        ),
        CheckConstraint("retain_days IS NULL OR retain_days > 0", name="retain_days_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"), index=True)
    window_size: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    auto_estimate: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    images_total: Mapped[int] = mapped_column(Integer, default=0)
    current_window_index: Mapped[int] = mapped_column(Integer, default=0)
    window_fill: Mapped[int] = mapped_column(Integer, default=0)
    # Retention (service/retention): keep at most the newest `retain_images` images and none older
    # than `retain_days`; NULL keeps them. Windows an unfinished job needs are always kept.
    retain_images: Mapped[int | None] = mapped_column(Integer)
    retain_days: Mapped[float | None] = mapped_column(Float)


class Batch(Base):
    """One accepted POST of images; `response` is the first answer, replayed on retries."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"), index=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 over stream, file names and digests: a reused key with other content is a 409.
    request_sha256: Mapped[str] = mapped_column(String(64))
    image_count: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Image(Base):
    """One stored image; `position`: ordinal within the stream; `path`: its storage key
    (`images/ab/cd/<sha256>.<ext>`, core/storage.py)."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("stream_id", "position"),
        Index("ix_images_stream_id_window_index", "stream_id", "window_index"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id"), index=True)
    window_index: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    filename: Mapped[str | None] = mapped_column(String(255))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The source model's class for this image, written by the estimate job; `label` (the true
    # class) arrives later through POST /v1/streams/{id}/labels. Both give realized accuracy.
    predicted_label: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[int | None] = mapped_column(Integer)
    labeled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    """GPU work: 'estimate' a stream window or 'calibrate' a model; the queue carries its id."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        CheckConstraint(_in("state", JOB_STATES), name="state"),
        Index("ix_jobs_state_created_at", "state", "created_at"),
        Index("ix_jobs_stream_id_window_index", "stream_id", "window_index"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    stream_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("streams.id"))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"))
    window_index: Mapped[int | None] = mapped_column(Integer)
    calibration_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("calibrations.id"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    steps_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str | None] = mapped_column(String(200))
    # The capability queue (service/core/dispatch.py JOB_QUEUES) chosen when the job was created;
    # every send and re-send of the job goes there.
    queue: Mapped[str] = mapped_column(String(64), server_default="estimates.gpu")
    # X-Request-ID of the API call that created the job: its log lines carry it (one grep).
    request_id: Mapped[str | None] = mapped_column(String(128))


NO_STREAM = uuid.UUID(int=0)
"""`JobCount.stream_key` of jobs without a stream (calibrations)."""


class JobCount(Base):
    """How many jobs each (stream, model, state) has: what flipwatch_jobs exports.

    Kept by database triggers on `jobs` (insert, delete, and updates of state, stream_id or
    model_id; migration 7b4d2e9c1a60), so every code path that moves a job, bulk updates
    included, keeps it exact without counting a million jobs per scrape. Calibration jobs have
    `stream_key` = NO_STREAM. Rows may reach 0 and stay.
    """

    __tablename__ = "job_counts"

    stream_key: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer)


class Estimate(Base):
    """The estimator's output for one stream window; at most one per window, by constraint."""

    __tablename__ = "estimates"
    __table_args__ = (
        UniqueConstraint("stream_id", "window_index"),
        # The realized-accuracy metrics read each stream's newest labeled windows: only those,
        # from the index alone on Postgres (INCLUDE the two values, an index-only scan).
        Index(
            "ix_estimates_stream_id_window_index_realized",
            "stream_id",
            "window_index",
            postgresql_include=["estimated_accuracy", "realized_accuracy"],
            postgresql_where=text("realized_accuracy IS NOT NULL"),
            sqlite_where=text("realized_accuracy IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    window_index: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"))
    model_version: Mapped[int] = mapped_column(Integer)
    image_count: Mapped[int | None] = mapped_column(Integer)
    estimated_accuracy: Mapped[float] = mapped_column(Float)
    signal: Mapped[str] = mapped_column(String(64))
    weighted_flips: Mapped[float | None] = mapped_column(Float)
    # EstimateResult.to_dict(): signals, checkpoints, baselines, embedding, steps, probe, device...
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Realized accuracy from labels posted later (service/label): the share of labeled images the
    # model got right, set once `labeled_count` reaches FLIPWATCH_REALIZED_MIN_LABELS.
    labeled_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    realized_accuracy: Mapped[float | None] = mapped_column(Float)
    realized_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LatestEstimate(Base):
    """One row per stream: what /metrics exports from the stream's latest estimate.

    Kept in the transaction that inserts an estimate (`estimate.latest.record_latest_estimate`),
    so a scrape reads one small row per stream instead of the latest of a million estimates and
    their result documents. `series` holds the finite values taken from the stored result (None
    when it does not parse); `last_estimate_at` is the newest `created_at` of any of the stream's
    estimates, which may belong to an older window estimated late.
    """

    __tablename__ = "latest_estimates"

    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"), primary_key=True)
    estimate_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("estimates.id"), index=True)
    window_index: Mapped[int] = mapped_column(Integer)
    estimated_accuracy: Mapped[float] = mapped_column(Float)
    weighted_flips: Mapped[float | None] = mapped_column(Float)
    series: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_estimate_at: Mapped[datetime] = mapped_column(UTCDateTime)


ALERT_RULE_KINDS = ("accuracy_below", "drop_below_reference", "embedding_above")
ALERT_RULE_STATES = ("ok", "firing")
ALERT_EVENT_STATES = ("firing", "resolved")
EMBEDDING_KINDS = ("frechet", "silhouette", "centroid_shift", "class_distance")
WEBHOOK_STATES = ("pending", "delivered", "failed")


class AlertRule(Base):
    """A drift rule of one stream, with its hysteresis state (alert/evaluation.py evaluates it).

    `state` is 'ok' or 'firing'; `streak` counts consecutive windows against the current state
    (breaching while ok, clean while firing); at `windows` the state flips and the streak resets.
    `last_window_index` makes evaluation idempotent: a window is counted at most once.
    """

    __tablename__ = "alert_rules"
    __table_args__ = (
        UniqueConstraint("stream_id", "name"),
        CheckConstraint(_in("kind", ALERT_RULE_KINDS), name="kind"),
        CheckConstraint(_in("state", ALERT_RULE_STATES), name="state"),
        CheckConstraint("windows >= 1", name="windows_positive"),
        CheckConstraint("streak >= 0", name="streak_not_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"), index=True)
    # The `rule` label of flipwatch_drift_alert; unique per stream.
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float] = mapped_column(Float)
    # Only for kind 'embedding_above': which result["embedding"] value to watch.
    embedding_kind: Mapped[str | None] = mapped_column(String(32))
    windows: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(16), default="ok")
    streak: Mapped[int] = mapped_column(Integer, default=0)
    last_window_index: Mapped[int | None] = mapped_column(Integer)
    last_value: Mapped[float | None] = mapped_column(Float)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertEvent(Base):
    """One state change of a rule ('firing' or 'resolved') and the estimate that caused it.

    Rule name and kind are copied so the history survives the rule's deletion (rule_id -> NULL).
    """

    __tablename__ = "alert_events"
    __table_args__ = (
        CheckConstraint(_in("state", ALERT_EVENT_STATES), name="state"),
        Index("ix_alert_events_stream_id_created_at", "stream_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    rule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="SET NULL"), index=True
    )
    rule_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    estimate_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("estimates.id"), index=True)
    window_index: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookNotification(Base):
    """The outbox of alert webhooks: one row per state change, delivered by alert/webhooks.py.

    `next_attempt_at` is both the retry time and the delivery lease (a claim moves it forward).
    """

    __tablename__ = "webhook_notifications"
    __table_args__ = (
        CheckConstraint(_in("state", WEBHOOK_STATES), name="state"),
        Index("ix_webhook_notifications_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("alert_events.id"), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
