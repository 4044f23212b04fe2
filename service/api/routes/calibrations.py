"""Calibrations: start one from a zip/tar ImageFolder upload (admin), read its state and result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from flipwatch.service.api.deps import (
    AdminKey,
    CalibrationID,
    ModelID,
    OutboxDep,
    ReadKey,
    SessionDep,
    SettingsDep,
    single_form_fields,
)
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.calibration import service as calibrations
from flipwatch.service.calibration.schemas import CalibrationOptions, CalibrationRead

router = APIRouter(tags=["calibrations"])


@router.post(
    "/v1/models/{model_id}/calibrations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CalibrationRead,
    responses=problem_responses(401, 403, 404, 413, 422),
    dependencies=[single_form_fields("archive", "steps", "families", "severities")],
)
def create_calibration(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    outbox: OutboxDep,
    _key: AdminKey,
    model_id: ModelID,
    archive: Annotated[
        UploadFile,
        File(description="zip or tar(.gz/.bz2/.xz) of an ImageFolder tree: one folder per class."),
    ],
    steps: Annotated[
        int | None, Form(description="adaptation steps per variant (default: the deployment's)")
    ] = None,
    families: Annotated[
        str | None, Form(description="comma-separated corruption families (default: all 17)")
    ] = None,
    severities: Annotated[
        str | None, Form(description="comma-separated severities 1..5 (default: 2,3,4)")
    ] = None,
) -> CalibrationRead:
    """Queue a calibration from a labeled reference set; poll the job or the calibration."""
    options = CalibrationOptions.parse_form(steps=steps, families=families, severities=severities)
    calibration, job = calibrations.start_calibration(
        session,
        settings=settings,
        model_id=model_id,
        archive=archive.file,
        filename=archive.filename or "archive",
        options=options,
    )
    outbox.add(job)
    response.headers["Location"] = f"/v1/calibrations/{calibration.id}"
    return CalibrationRead.of(calibration)


@router.get(
    "/v1/calibrations/{calibration_id}",
    response_model=CalibrationRead,
    responses=problem_responses(401, 403, 404),
)
def read_calibration(
    session: SessionDep, _key: ReadKey, calibration_id: CalibrationID
) -> CalibrationRead:
    """State, and once succeeded the result: coefficients, leave-one-family-out MAE, signal."""
    return CalibrationRead.of(calibrations.get_calibration(session, calibration_id))
