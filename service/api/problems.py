"""Every error as application/problem+json (RFC 9457): type, title, status, detail, code, extras.

Expected failures are FlipwatchError subclasses; validation errors, HTTP errors and unique
constraint races are mapped here too, so nothing expected ever surfaces as a bare 500.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flipwatch.service.core.errors import FlipwatchError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:flipwatch:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _flipwatch_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FlipwatchError)
    return problem_response(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        extra=exc.extra,
        headers=exc.headers or None,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(p) for p in err.get("loc", ())[1:]) or "body",
            "location": (err.get("loc") or ("body",))[0],
            "reason": err.get("msg", "invalid"),
        }
        for err in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors) or "invalid request"
    return problem_response(
        status=422,
        code="invalid-request",
        title="Invalid request",
        detail=detail,
        extra={"errors": errors},
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request, headers.get("Allow", "")))
    title = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}.get(
        exc.status_code, "HTTP error"
    )
    return problem_response(
        status=exc.status_code,
        code=title.lower().replace(" ", "-"),
        title=title,
        detail=str(exc.detail),
        headers=headers or None,
    )


def allowed_methods(request: Request, fallback: str = "") -> list[str]:
    """Every method the API documents at this path (Starlette names only the first route's)."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^/}]+\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods) or [m.strip() for m in fallback.split(",") if m.strip()]


async def _integrity_error(_: Request, exc: Exception) -> JSONResponse:
    # A unique constraint lost a race with a concurrent request; retrying gives the right answer.
    log.warning("integrity error: %s", exc)
    return problem_response(
        status=409,
        code="concurrent-conflict",
        title="Conflict with a concurrent request",
        detail="another request changed the same rows at the same time; retry the request",
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database is down or unreachable (connection refused, reset, timed out): 503 with
    Retry-After. Once it is back, the pool's pre-ping replaces dead connections; no restart."""
    assert isinstance(exc, DBAPIError)
    if isinstance(exc, DataError):
        return await _data_error(request, exc)
    if not (exc.connection_invalidated or _is_unavailable(exc)):
        return await _unexpected_error(request, exc)
    log.warning("database unavailable: %s", exc.orig)
    retry_after = request.app.state.settings.retry_after_seconds
    return problem_response(
        status=503,
        code="database-unavailable",
        title="Database unavailable",
        detail="the database cannot be reached right now; retry after the Retry-After delay",
        headers={"Retry-After": str(retry_after)},
    )


def _is_unavailable(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


async def _data_error(_: Request, exc: Exception) -> JSONResponse:
    # Text the database cannot store (a NUL byte, out-of-range numbers) that validation missed.
    log.warning("data error: %s", exc)
    return problem_response(
        status=422,
        code="invalid-data",
        title="Invalid data",
        detail="the database refused a value of this request (for example a NUL byte in a text "
        "field or a number out of range); correct the request",
    )


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(
        status=500,
        code="internal-error",
        title="Internal error",
        detail="an unexpected error occurred; the server log has the details",
    )


def register_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FlipwatchError, _flipwatch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting problem bodies for these statuses."""
    from flipwatch.service.api.schemas import Problem

    return {
        status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Problem"}
        for status in statuses
    }
