"""Request and response bodies (pydantic v2): `<Noun>Create`, `<Noun>Read`, `Page[<Noun>Read]`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from flipwatch.service.errors import InvalidCalibrationOptions
from flipwatch.service.models import Calibration, Job
from flipwatch.service.pagination import Cursor

T = TypeVar("T")
ReadT = TypeVar("ReadT", bound=BaseModel)


def job_url(job_id: uuid.UUID) -> str:
    return f"/v1/jobs/{job_id}"


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[T]
    next_cursor: str | None = None


def page_of(
    read: type[ReadT], rows: Iterable[Any], next_cursor: Cursor | None = None
) -> Page[ReadT]:
    """ORM rows as a Page of `read` models; `next_cursor` is None on the last page."""
    return Page[read](  # type: ignore[valid-type]
        items=[read.model_validate(r) for r in rows],
        next_cursor=next_cursor.encode() if next_cursor else None,
    )


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:flipwatch:problem:batch-rejected"])
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-item reasons, e.g. {file, index, reason} for a batch."
    )


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: int
    spec: dict[str, Any]
    weights_sha256: str
    created_at: datetime


StreamName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        examples=["checkout-camera-3"],
    ),
]


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StreamName
    model_id: uuid.UUID
    window_size: int | None = Field(
        default=None, ge=64, le=1_000_000, description="Images per estimate (default 1000)."
    )
    steps: int | None = Field(
        default=None, ge=1, le=100_000, description="Adaptation steps per estimate (default 250)."
    )
    auto_estimate: bool = Field(
        default=True, description="Queue an estimate whenever a window fills."
    )


class StreamRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    model_id: uuid.UUID
    window_size: int
    steps: int
    auto_estimate: bool
    images_total: int
    current_window_index: int
    window_fill: int = Field(description="Images in the open window.")
    created_at: datetime


class WindowFill(BaseModel):
    index: int
    fill: int
    size: int


class JobLink(BaseModel):
    id: uuid.UUID
    window_index: int | None
    url: str


class BatchAccepted(BaseModel):
    """The 202 answer; replayed as-is for a retried Idempotency-Key."""

    batch_id: uuid.UUID
    stream_id: uuid.UUID
    image_count: int
    images_total: int
    window: WindowFill = Field(description="The stream's open window after this batch.")
    job_url: str | None = Field(
        default=None, description="The estimate job of the last window this batch closed."
    )
    jobs: list[JobLink] = Field(default_factory=list, description="One per window closed.")
    notices: list[str] = Field(
        default_factory=list, description="E.g. why a closed window got no estimate."
    )


class JobProgress(BaseModel):
    steps_done: int
    steps_total: int
    fraction: float


class JobRead(BaseModel):
    id: uuid.UUID
    kind: Literal["estimate", "calibrate"]
    state: Literal["queued", "running", "succeeded", "failed"]
    attempts: int
    max_attempts: int
    progress: JobProgress
    stream_id: uuid.UUID | None
    model_id: uuid.UUID
    window_index: int | None
    calibration_id: uuid.UUID | None
    error: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    estimate_id: uuid.UUID | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, job: Job, *, estimate_id: uuid.UUID | None = None) -> JobRead:
        total = job.steps_total or 0
        links = {"self": job_url(job.id)}
        if estimate_id is not None:
            links["estimate"] = f"/v1/estimates/{estimate_id}"
        if job.calibration_id is not None:
            links["calibration"] = f"/v1/calibrations/{job.calibration_id}"
        if job.stream_id is not None:
            links["stream"] = f"/v1/streams/{job.stream_id}"
        return cls(
            id=job.id,
            kind=job.kind,  # type: ignore[arg-type]
            state=job.state,  # type: ignore[arg-type]
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            progress=JobProgress(
                steps_done=job.steps_done,
                steps_total=total,
                fraction=round(min(job.steps_done / total, 1.0), 4) if total else 0.0,
            ),
            stream_id=job.stream_id,
            model_id=job.model_id,
            window_index=job.window_index,
            calibration_id=job.calibration_id,
            error=job.error,
            worker=job.worker,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            heartbeat_at=job.heartbeat_at,
            estimate_id=estimate_id,
            links=links,
        )


class CalibrationOptions(BaseModel):
    """Per-request calibration suite and trajectory; unset fields use the deployment's Settings."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(
        default=None, ge=1, le=5000, description="Adaptation steps per variant (checkpoints ≤ it)."
    )
    families: list[str] | None = Field(
        default=None, min_length=1, description="Corruption families (default: all)."
    )
    severities: list[int] | None = Field(default=None, min_length=1)

    @classmethod
    def parse_form(
        cls, *, steps: int | None, families: str | None, severities: str | None
    ) -> CalibrationOptions:
        """Comma-separated form fields -> options; names and ranges checked, errors name them."""
        from flipwatch.workers.estimation.families import FAMILIES as CORRUPTIONS
        from flipwatch.workers.estimation.families import SEVERITIES

        names = [f.strip() for f in families.split(",") if f.strip()] if families else None
        unknown = sorted(set(names or []) - set(CORRUPTIONS))
        if unknown:
            raise InvalidCalibrationOptions(
                f"unknown corruption families {unknown}; choose from {sorted(CORRUPTIONS)}"
            )
        try:
            levels = [int(s) for s in severities.split(",") if s.strip()] if severities else None
        except ValueError as exc:
            raise InvalidCalibrationOptions(
                f"severities must be comma-separated integers, got {severities!r}"
            ) from exc
        if levels is not None and not set(levels) <= set(SEVERITIES):
            raise InvalidCalibrationOptions(f"severities must lie in 1..5, got {levels}")
        if steps is not None and not 1 <= steps <= 5000:
            raise InvalidCalibrationOptions(f"steps must lie in 1..5000, got {steps}")
        return cls(steps=steps, families=names or None, severities=levels or None)


class CalibrationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    model_id: uuid.UUID
    job_id: uuid.UUID | None
    state: Literal["queued", "running", "succeeded", "failed"]
    reference_images: int
    reference_classes: list[str]
    reference_accuracy: float | None
    options: dict[str, Any] = Field(
        default_factory=dict, description="The suite and steps requested for this calibration."
    )
    result: dict[str, Any] | None = Field(
        description="The estimator's calibration (coefficients, leave-one-family-out MAE, "
        "selected signal) once succeeded."
    )
    created_at: datetime
    finished_at: datetime | None
    job_url: str | None = None

    @classmethod
    def of(cls, calibration: Calibration) -> CalibrationRead:
        read = cls.model_validate(calibration)
        read.job_url = job_url(calibration.job_id) if calibration.job_id else None
        return read


class EstimateRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stream_id: uuid.UUID
    job_id: uuid.UUID | None
    window_index: int
    model_id: uuid.UUID
    model_version: int
    image_count: int | None
    estimated_accuracy: float
    signal: str
    weighted_flips: float | None
    result: dict[str, Any] = Field(
        description="The estimator's full output: signals, checkpoints, baselines, embedding "
        "distances, steps, probe size, seconds, device."
    )
    created_at: datetime


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: str
    broker: str


# --- alerts (service/alerts.py) ----------------------------------------------------------------

AlertRuleKind = Literal["accuracy_below", "drop_below_reference", "embedding_above"]
EmbeddingKind = Literal["frechet", "silhouette", "centroid_shift"]
AlertRuleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Unique per stream; the `rule` label of flipwatch_drift_alert.",
        examples=["accuracy-floor"],
    ),
]
THRESHOLD_DESCRIPTION = (
    "accuracy_below: a ratio in (0, 1], fires when estimated accuracy < threshold; "
    "drop_below_reference: percentage points in (0, 100], fires when the estimate is more than "
    "this many points below the model's calibration (reference) accuracy; embedding_above: fires "
    "when result.embedding[embedding_kind] > threshold."
)


class AlertRuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: AlertRuleName
    kind: AlertRuleKind
    threshold: float = Field(description=THRESHOLD_DESCRIPTION, examples=[0.8])
    embedding_kind: EmbeddingKind | None = Field(
        default=None, description="Required for (and only for) kind embedding_above."
    )
    windows: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Hysteresis K: fires after K consecutive breaching windows, resolves after K "
        "consecutive clean ones.",
    )
    webhook_url: HttpUrl | None = Field(
        default=None, description="Receives a POST per state change (retried until 2xx)."
    )


class AlertRuleUpdate(BaseModel):
    """Fields to change; `kind` is fixed (create another rule instead). Send null to clear
    `webhook_url`. A change to threshold, embedding_kind or windows restarts the streak."""

    model_config = ConfigDict(extra="forbid")

    name: AlertRuleName | None = None
    threshold: float | None = Field(default=None, description=THRESHOLD_DESCRIPTION)
    embedding_kind: EmbeddingKind | None = None
    windows: int | None = Field(default=None, ge=1, le=1000)
    webhook_url: HttpUrl | None = None


class AlertRuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stream_id: uuid.UUID
    name: str
    kind: AlertRuleKind
    threshold: float
    embedding_kind: EmbeddingKind | None
    windows: int
    webhook_url: str | None
    state: Literal["ok", "firing"]
    streak: int = Field(
        description="Consecutive windows counted toward the next change (breaching while ok, "
        "clean while firing)."
    )
    last_window_index: int | None = Field(description="The last window evaluated.")
    last_value: float | None = Field(description="The value measured on that window.")
    changed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AlertEventRead(BaseModel):
    """One state change; `estimate_id` is the estimate whose window completed the streak."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stream_id: uuid.UUID
    rule_id: uuid.UUID | None = Field(description="null once the rule was deleted.")
    rule_name: str
    kind: AlertRuleKind
    state: Literal["firing", "resolved"]
    estimate_id: uuid.UUID
    window_index: int
    value: float
    threshold: float
    message: str
    created_at: datetime


# --- status page (service/status.py) -----------------------------------------------------------


class StatusPoint(BaseModel):
    window_index: int
    estimated_accuracy: float
    weighted_flips: float | None
    signal: str
    baselines: dict[str, float | None]
    created_at: datetime


class StatusAlertMarker(BaseModel):
    window_index: int
    state: Literal["firing", "resolved"]
    rule_name: str
    created_at: datetime


class StatusRule(BaseModel):
    name: str
    kind: AlertRuleKind
    threshold: float
    state: Literal["ok", "firing"]


class StatusStream(BaseModel):
    id: uuid.UUID
    name: str
    model: str
    model_version: int
    images_total: int
    window: WindowFill
    latest: StatusPoint | None
    rules: list[StatusRule]
    series: list[StatusPoint] = Field(description="The latest estimates, oldest window first.")
    alerts: list[StatusAlertMarker] = Field(description="State changes within the series.")


class StatusJob(BaseModel):
    id: uuid.UUID
    kind: Literal["estimate", "calibrate"]
    state: Literal["queued", "running", "succeeded", "failed"]
    stream: str | None
    model: str
    window_index: int | None
    progress: float
    created_at: datetime
    started_at: datetime | None


class StatusRead(BaseModel):
    """What the status page shows: every stream with its recent estimates, and the job queue."""

    generated_at: datetime
    jobs: dict[str, int] = Field(description="Job count per state.")
    queue: list[StatusJob] = Field(description="Queued and running jobs, oldest first.")
    streams: list[StatusStream]
