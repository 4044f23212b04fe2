"""The OpenAPI document and its viewers: public in dev, behind any valid API key in prod.

`FLIPWATCH_PUBLIC_DOCS` overrides. A browser passes the key the way the status page takes it
(open `/?key=<token>` once: the cookie then covers /docs and /openapi.json too).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from flipwatch.service.api.deps import SessionDep, SettingsDep
from flipwatch.service.api.docs import redoc_page, swagger_page
from flipwatch.service.api.routes.status_page import check_status_access

router = APIRouter(include_in_schema=False)


def _check(request: Request, session: SessionDep, settings: SettingsDep) -> None:
    if not settings.docs_are_public:
        check_status_access(request, session, public=False)


@router.get("/openapi.json")
def read_openapi(request: Request, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    _check(request, session, settings)
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def read_docs(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    _check(request, session, settings)
    return swagger_page("/openapi.json", "flipwatch API")


@router.get("/redoc")
def read_redoc(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    _check(request, session, settings)
    return redoc_page("/openapi.json", "flipwatch API")
