"""Calibrations: a labeled reference set in, a calibration job out; and which models may estimate.

A model estimates with its latest succeeded calibration, or with the built-in (paper) calibration
only when its spec says `imagenet: true`. Otherwise estimates are refused until it is calibrated.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.archives import extract_image_folder
from flipwatch.service.errors import ArchiveRejected, CalibrationNotFound
from flipwatch.service.jobs import create_calibration_job
from flipwatch.service.models import Calibration, Job, Model
from flipwatch.service.schemas import CalibrationOptions
from flipwatch.service.settings import Settings


def latest_calibration(
    session: Session, model_id: uuid.UUID, *, states: tuple[str, ...] = ("succeeded",)
) -> Calibration | None:
    return session.scalar(
        select(Calibration)
        .where(Calibration.model_id == model_id, Calibration.state.in_(states))
        .order_by(Calibration.created_at.desc())
        .limit(1)
    )


def estimation_blocker(session: Session, model: Model) -> str | None:
    """Why this model cannot be estimated yet, or None when it can."""
    if model.spec.get("imagenet"):
        return None
    if latest_calibration(session, model.id) is not None:
        return None
    pending = latest_calibration(session, model.id, states=("queued", "running"))
    if pending is not None:
        return (
            f"model {model.name!r} v{model.version} is not an ImageNet classifier and its "
            f"calibration {pending.id} is {pending.state}; estimates start once it succeeds"
        )
    return (
        f"model {model.name!r} v{model.version} is not an ImageNet classifier (spec imagenet: "
        f"false) and has no calibration; upload a labeled reference set with "
        f"POST /v1/models/{model.id}/calibrations first"
    )


def start_calibration(
    session: Session,
    *,
    settings: Settings,
    model: Model,
    archive_path: Path,
    filename: str,
    options: CalibrationOptions | None = None,
) -> tuple[Calibration, Job]:
    """Extract the reference set into data_dir/calibrations/<id>/ and queue a calibrate job."""
    options = options or CalibrationOptions()
    calibration_id = uuid.uuid4()
    dest = Path(settings.data_dir).resolve() / "calibrations" / str(calibration_id)
    folder = extract_image_folder(
        archive_path,
        dest,
        filename=filename,
        max_entries=settings.max_archive_entries,
        max_bytes=settings.max_archive_bytes,
    )
    num_classes = int(model.spec["num_classes"])
    if len(folder.classes) > num_classes:
        raise ArchiveRejected(
            f"{filename!r} has {len(folder.classes)} class folders but model {model.name!r} has "
            f"{num_classes} classes; folders map to class indices in sorted order"
        )
    calibration = Calibration(
        id=calibration_id,
        model_id=model.id,
        state="queued",
        reference_path=str(folder.root),
        reference_images=folder.image_count,
        reference_classes=folder.classes,
        options=options.model_dump(exclude_none=True),
    )
    session.add(calibration)
    session.flush()
    job = create_calibration_job(
        session, model=model, calibration=calibration, steps=options.steps or settings.default_steps
    )
    calibration.job_id = job.id
    session.flush()
    return calibration, job


def get_calibration(session: Session, calibration_id: uuid.UUID) -> Calibration:
    calibration = session.get(Calibration, calibration_id)
    if calibration is None:
        raise CalibrationNotFound(f"calibration {calibration_id} does not exist")
    return calibration
