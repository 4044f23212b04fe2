"""The status page for people without Grafana: GET / (server-rendered HTML) and its data,
GET /v1/status (JSON, fetched by service/status/static/status.js to draw the charts).

Access: with `FLIPWATCH_PUBLIC_STATUS_PAGE` true (the default in dev) both are open. Otherwise
they need a key with the read role: an `Authorization: Bearer` header, or the `flipwatch_key`
cookie, which the page's own form (POST /, key in the body) or `GET /?key=<token>` sets before
redirecting to `/` (the form keeps the token out of URLs and access logs; `?key=` is for links).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from html import escape
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from flipwatch.service.api.deps import SessionDep, SettingsDep
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.core.auth import READ_ROLES, authenticate, check_role
from flipwatch.service.core.errors import NotAuthenticated, PermissionDenied
from flipwatch.service.status.schemas import StatusRead, StatusStream
from flipwatch.service.status.service import STATUS_FILES, read_status

router = APIRouter(tags=["status"])

STATUS_COOKIE = "flipwatch_key"
# No inline script or style: the page loads only its own static files.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
REFRESH_SECONDS = 60


def check_status_access(
    request: Request, session: Session, *, public: bool, key: str | None = None
) -> None:
    """Raise NotAuthenticated / PermissionDenied unless the page is public or a read key is
    given (as `key`, a bearer header or the cookie)."""
    if public:
        return
    token = key or request.cookies.get(STATUS_COOKIE)
    header = request.headers.get("authorization") or (f"Bearer {token}" if token else None)
    if header is None:
        raise NotAuthenticated(
            "the status page needs a read API key: open /?key=<token> once (it sets a cookie), "
            "or send 'Authorization: Bearer <token>'"
        )
    check_role(authenticate(session, header), READ_ROLES, "viewing the status page")


def require_status_access(request: Request, session: SessionDep, settings: SettingsDep) -> None:
    check_status_access(request, session, public=settings.status_page_is_public)


StatusAccess = Annotated[None, Depends(require_status_access)]


@router.get("/v1/status", response_model=StatusRead, responses=problem_responses(401, 403))
def read_status_data(session: SessionDep, _access: StatusAccess) -> StatusRead:
    """Every stream with its latest estimates (oldest first), rules and alert changes, and the
    job queue: the status page's data."""
    return read_status(session)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def read_status_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str | None, Query(description="A read API key; stored as a cookie.")] = None,
) -> Response:
    public = settings.status_page_is_public
    try:
        check_status_access(request, session, public=public, key=key)
    except (NotAuthenticated, PermissionDenied) as exc:
        return _html(_render_login(exc.detail), status_code=exc.status)
    if key:
        # 303: the browser follows with a GET, leaving the key out of the address bar.
        redirect = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
        if not public:
            redirect.set_cookie(
                STATUS_COOKIE,
                key,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
        return redirect
    return _html(render_status_page(read_status(session)))


@router.post("/", response_class=HTMLResponse, include_in_schema=False)
def submit_status_key(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    """The login form: check the key, keep it in an HttpOnly cookie, back to the page."""
    return read_status_page(request, session, settings, key=key)


def _html(body: str, *, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"},
    )


# --- rendering (plain string templates; every value escaped) -----------------------------------


@cache
def _template(name: str) -> str:
    return STATUS_FILES.joinpath("templates", name).read_text(encoding="utf-8")


@cache
def _static_version() -> str:
    """Changes when the static files do, so browsers never keep a stale script."""
    digest = hashlib.sha256()
    for name in ("status.js", "status.css"):
        digest.update(STATUS_FILES.joinpath("static", name).read_bytes())
    return digest.hexdigest()[:12]


def _fill(template: str, **values: str) -> str:
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def render_status_page(data: StatusRead) -> str:
    return _fill(
        _template("status.html"),
        refresh=str(REFRESH_SECONDS),
        version=_static_version(),
        generated_at=escape(_when(data.generated_at)),
        job_counts=_render_job_counts(data.jobs),
        queue=_render_queue(data),
        streams="\n".join(_render_stream(s) for s in data.streams)
        or '<p class="empty">No streams yet: create one with POST /v1/streams.</p>',
    )


def _render_login(reason: str) -> str:
    return _fill(_template("status_login.html"), version=_static_version(), reason=escape(reason))


def _render_job_counts(counts: dict[str, int]) -> str:
    return "".join(
        f'<li class="count state-{escape(state)}"><span>{escape(state)}</span>'
        f'<strong data-state="{escape(state)}">{count}</strong></li>'
        for state, count in counts.items()
    )


def _render_queue(data: StatusRead) -> str:
    if not data.queue:
        return '<p class="empty">No queued or running jobs.</p>'
    rows = "".join(
        "<tr>"
        f'<td><span class="badge state-{escape(job.state)}">{escape(job.state)}</span></td>'
        f"<td>{escape(job.kind)}</td>"
        f"<td>{escape(job.stream or '-')}</td>"
        f"<td>{escape(job.model)}</td>"
        f"<td>{'' if job.window_index is None else job.window_index}</td>"
        f'<td><progress max="1" value="{job.progress}"></progress> {job.progress:.0%}</td>'
        f"<td>{escape(_when(job.created_at))}</td>"
        "</tr>"
        for job in data.queue
    )
    return (
        '<table class="queue"><thead><tr><th>state</th><th>kind</th><th>stream</th>'
        "<th>model</th><th>window</th><th>progress</th><th>queued at</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _render_stream(stream: StatusStream) -> str:
    latest = stream.latest
    if latest is None:
        summary = '<p class="empty">No estimate yet.</p>'
    else:
        flips = "-" if latest.weighted_flips is None else f"{latest.weighted_flips:.4f}"
        summary = (
            '<dl class="latest">'
            f'<dt>estimated accuracy</dt><dd class="accuracy">{latest.estimated_accuracy:.1%}</dd>'
            f"<dt>window</dt><dd>{latest.window_index}</dd>"
            f"<dt>weighted flips</dt><dd>{flips}</dd>"
            f"<dt>signal</dt><dd>{escape(latest.signal)}</dd>"
            f"<dt>at</dt><dd>{escape(_when(latest.created_at))}</dd>"
            "</dl>"
        )
    chart = (
        f'<figure class="chart" data-stream-id="{stream.id}" data-points="{len(stream.series)}">'
        "<noscript>The chart needs JavaScript.</noscript></figure>"
        if stream.series
        else ""
    )
    rules = "".join(
        f'<li class="badge rule-{escape(r.state)}" title="{escape(r.kind)} {r.threshold:g}">'
        f"{escape(r.name)}: {escape(r.state)}</li>"
        for r in stream.rules
    )
    window = stream.window
    return (
        f'<section class="stream" data-stream-id="{stream.id}" data-stream="{escape(stream.name)}">'
        f"<header><h2>{escape(stream.name)}</h2>"
        f'<span class="model">{escape(stream.model)} v{stream.model_version}</span>'
        f'<span class="images">{stream.images_total} images; window {window.index}: '
        f"{window.fill}/{window.size}</span></header>"
        f'<ul class="rules">{rules}</ul>'
        f'<div class="body">{summary}{chart}</div>'
        "</section>"
    )


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
