"""Model registration: a ModelSpec plus its weights file, checked by the injected `ModelCheck`.

The check (the estimator's `load_model`, passed in by the process's start-up code) runs in the API
process but is never imported by this package, which stays torch-free.

Weights are stored content-addressed under the key `models/<sha256>.pt` in the object store
(core/storage.py); the stored spec's `weights` is that key, so the worker loads exactly what was
validated here (from its local cache, checked against the digest).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flipwatch.service.core import staging, storage
from flipwatch.service.core.errors import (
    InvalidModelSpec,
    ModelNotFound,
    ModelRejected,
    PayloadTooLarge,
)
from flipwatch.service.core.pagination import Cursor, keyset_page
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Model
from flipwatch.workers.estimation.spec import ModelSpec

CHUNK = 1 << 20

ModelCheck = Callable[[ModelSpec], None]
"""Raises ValueError (with a message naming the fix) when a spec plus weights cannot be used."""


def parse_spec(text: str) -> ModelSpec:
    """The registration's `spec` field; `weights` must be absent (it is the uploaded file)."""
    try:
        spec = ModelSpec.model_validate_json(text)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "spec", "reason": e["msg"]}
            for e in exc.errors()
        ]
        raise InvalidModelSpec(
            "the 'spec' field is not a valid model spec: "
            + "; ".join(f"{e['field']}: {e['reason']}" for e in errors),
            errors=errors,
        ) from exc
    if spec.weights is not None:
        raise InvalidModelSpec(
            "leave 'weights' out of the spec: the weights come from the uploaded 'weights' file",
            errors=[{"field": "weights", "reason": "must be omitted"}],
        )
    return spec


def get_model(session: Session, model_id: uuid.UUID) -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise ModelNotFound(f"model {model_id} does not exist; list models with GET /v1/models")
    return model


def list_models(
    session: Session, *, limit: int, cursor: Cursor | None, name: str | None = None
) -> tuple[list[Model], Cursor | None]:
    stmt = select(Model)
    if name is not None:
        stmt = stmt.where(Model.name == name)
    return keyset_page(session, stmt, Model, limit=limit, cursor=cursor)


def register_model(
    session: Session,
    *,
    settings: Settings,
    spec_json: str,
    weights: IO[bytes],
    check: ModelCheck | None,
) -> Model:
    """Store the weights, prove the model loads (and has BatchNorm), add version N+1 of its name.

    Without a `check` (an API process started without the estimator) the worker's first job is
    where a bad model is reported.
    """
    spec = parse_spec(spec_json)
    scratch = Path(settings.data_dir).resolve() / "tmp"  # local scratch: the check loads a file
    scratch.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=scratch, prefix=".upload-", suffix=".pt")
    tmp = Path(tmp_name)
    try:
        digest, size = _copy_hashed(weights, fd, limit=settings.max_weights_bytes)
        if size == 0:
            raise ModelRejected("the 'weights' file is empty", errors=[{"field": "weights"}])
        if check is not None:
            try:
                check(spec.model_copy(update={"weights": str(tmp)}))
            except ValueError as exc:
                raise ModelRejected(str(exc)) from exc
        key = storage.weights_key(digest)
        store = storage.open_store(settings)
        if not store.exists(key):
            store.put_file(key, tmp)
            # New weights go if the row does not land.
            staging.remove_on_rollback(session, store, key)
    finally:
        tmp.unlink(missing_ok=True)

    latest = session.scalar(select(func.max(Model.version)).where(Model.name == spec.name))
    model = Model(
        id=uuid.uuid4(),
        name=spec.name,
        version=(latest or 0) + 1,
        spec=spec.model_copy(update={"weights": key}).model_dump(mode="json"),
        weights_path=key,
        weights_sha256=digest,
    )
    session.add(model)
    session.flush()
    return model


def _copy_hashed(source: IO[bytes], fd: int, *, limit: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the weights file is over the limit of {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size
