"""Models: register (spec + weights, multipart), list, get. Admin registers; any key reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status

from flipwatch.service.api.deps import (
    AdminKey,
    ModelID,
    ReadKey,
    SessionDep,
    SettingsDep,
    single_form_fields,
)
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.core.pagination import Cursor, Page, page_of
from flipwatch.service.model import service as models
from flipwatch.service.model.schemas import ModelRead

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelRead,
    responses=problem_responses(401, 403, 413, 422),
    dependencies=[single_form_fields("spec", "weights")],
)
def create_model(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    _key: AdminKey,
    spec: Annotated[
        str,
        Form(
            description="The model spec as JSON (workers/estimation/spec.py ModelSpec) without "
            "'weights'.",
            examples=[
                '{"name": "shelf-classifier", "format": "torchvision", "arch": "resnet18", '
                '"num_classes": 12}'
            ],
        ),
    ],
    weights: Annotated[
        UploadFile, File(description="The weights file (state dict or TorchScript).")
    ],
) -> ModelRead:
    """Register a model version: it must load and have BatchNorm layers (422 otherwise)."""
    model = models.register_model(
        session,
        settings=settings,
        spec_json=spec,
        weights=weights.file,
        check=request.app.state.model_check,
    )
    response.headers["Location"] = f"/v1/models/{model.id}"
    return ModelRead.model_validate(model)


@router.get("", response_model=Page[ModelRead], responses=problem_responses(401, 403, 422))
def list_models(
    session: SessionDep,
    _key: ReadKey,
    name: Annotated[str | None, Query(description="Only versions of this model name.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Page[ModelRead]:
    """Models, newest first."""
    rows, next_cursor = models.list_models(
        session, limit=limit, cursor=Cursor.decode(cursor) if cursor else None, name=name
    )
    return page_of(ModelRead, rows, next_cursor)


@router.get("/{model_id}", response_model=ModelRead, responses=problem_responses(401, 403, 404))
def read_model(session: SessionDep, _key: ReadKey, model_id: ModelID) -> ModelRead:
    return ModelRead.model_validate(models.get_model(session, model_id))
