"""Calibrations: a labeled reference set in, a calibration job out; and which models may estimate.

A model estimates with its latest succeeded calibration, or with the built-in (paper) calibration
only when its spec says `imagenet: true`. Otherwise estimates are refused until it is calibrated.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.calibration.archive import extract_image_folder
from flipwatch.service.calibration.schemas import CalibrationOptions
from flipwatch.service.core import staging, storage
from flipwatch.service.core.errors import ArchiveRejected, CalibrationNotFound, PayloadTooLarge
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Calibration, Job, Model
from flipwatch.service.job.service import create_calibration_job, variant_count
from flipwatch.service.model.service import get_model
from flipwatch.workers.estimation.families import FAMILIES

CHUNK = 1 << 20


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
    model_id: uuid.UUID,
    archive: IO[bytes],
    filename: str,
    options: CalibrationOptions | None = None,
) -> tuple[Calibration, Job]:
    """Spool the uploaded archive (size-capped), extract it and queue a calibrate job.

    The archive is spooled to data_dir/tmp first: zip needs a seekable file, and the cap holds
    whatever the client declared.
    """
    model = get_model(session, model_id)
    tmp_dir = Path(settings.data_dir).resolve() / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="archive-") as spooled:
        size = 0
        while chunk := archive.read(CHUNK):
            size += len(chunk)
            if size > settings.max_archive_bytes:
                raise PayloadTooLarge(
                    f"{filename!r} is over the limit of {settings.max_archive_bytes} bytes"
                )
            spooled.write(chunk)
        spooled.flush()
        return _queue_calibration(
            session,
            settings=settings,
            model=model,
            archive_path=Path(spooled.name),
            filename=filename,
            options=options,
        )


def _queue_calibration(
    session: Session,
    *,
    settings: Settings,
    model: Model,
    archive_path: Path,
    filename: str,
    options: CalibrationOptions | None = None,
) -> tuple[Calibration, Job]:
    """Extract the reference set (to local scratch), check it, upload it under the key prefix
    `calibrations/<id>/` and queue a calibrate job."""
    options = options or CalibrationOptions()
    calibration_id = uuid.uuid4()
    scratch = Path(settings.data_dir).resolve() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="reference-") as extracted:
        dest = Path(extracted) / "set"
        folder = extract_image_folder(
            archive_path,
            dest,
            filename=filename,
            max_entries=settings.max_archive_entries,
            max_bytes=settings.max_archive_unpacked_bytes,
            max_ratio=settings.max_archive_ratio,
        )
        _check_classes(folder.classes, model, filename)
        prefix = storage.reference_prefix(calibration_id)
        store = storage.open_store(settings)
        staging.remove_on_rollback(session, store, prefix)  # a refused or failed request keeps none
        storage.put_tree(store, dest, prefix, threads=settings.storage_threads)
        root = Path(folder.root).resolve().relative_to(dest.resolve()).as_posix()
        reference_key = prefix.rstrip("/") if root == "." else prefix + root
    calibration = Calibration(
        id=calibration_id,
        model_id=model.id,
        state="queued",
        reference_path=reference_key,
        reference_images=folder.image_count,
        reference_classes=folder.classes,
        options=options.model_dump(exclude_none=True),
    )
    session.add(calibration)
    session.flush()
    families = options.families or settings.calibration_families or FAMILIES
    severities = options.severities or settings.calibration_severities
    job = create_calibration_job(
        session,
        model=model,
        calibration=calibration,
        variants=variant_count(len(families), len(severities)),
    )
    calibration.job_id = job.id
    session.flush()
    return calibration, job


def _check_classes(classes: list[str], model: Model, filename: str) -> None:
    num_classes = int(model.spec["num_classes"])
    if len(classes) != num_classes:
        raise ArchiveRejected(
            f"{filename!r} has {len(classes)} class folders with images but model "
            f"{model.name!r} has {num_classes} classes; give one folder per class (folders map "
            "to class indices in sorted order)"
        )


def get_calibration(session: Session, calibration_id: uuid.UUID) -> Calibration:
    calibration = session.get(Calibration, calibration_id)
    if calibration is None:
        raise CalibrationNotFound(f"calibration {calibration_id} does not exist")
    return calibration
