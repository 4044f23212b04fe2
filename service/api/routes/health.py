"""Liveness and readiness probes; the only routes without an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from flipwatch.service.api.deps import SessionDep
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.api.schemas import Health, Readiness
from flipwatch.service.core import storage
from flipwatch.service.core.errors import DatabaseUnavailable, NotReady, StorageUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def read_health() -> Health:
    """The process is up (no dependencies checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
def read_readiness(request: Request, session: SessionDep) -> Readiness:
    """The database answers, the broker answers (unless embedded) and the object store takes
    requests: the data dir exists and takes a file, or the bucket answers one HEAD within 2 s.
    Otherwise 503 + Retry-After, and the problem's code names the dependency."""
    settings = request.app.state.settings
    retry_after = settings.retry_after_seconds
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        raise DatabaseUnavailable(
            f"database unreachable: {type(exc).__name__}: {exc}", retry_after=retry_after
        ) from exc
    check = request.app.state.broker_check
    if check is None:
        broker = "embedded"
    else:
        try:
            check()
        except Exception as exc:  # noqa: BLE001
            raise NotReady(
                f"broker unreachable: {type(exc).__name__}: {exc}", retry_after=retry_after
            ) from exc
        broker = "ok"
    name = settings.storage_backend
    try:
        store = storage.open_store(settings)
        name = repr(store)
        store.probe()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        raise StorageUnavailable(
            f"object storage {name} is not usable: {type(exc).__name__}: {exc}",
            retry_after=retry_after,
        ) from exc
    return Readiness(status="ready", database="ok", broker=broker, storage="ok")
