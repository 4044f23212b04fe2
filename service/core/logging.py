"""Structured logs: one JSON object per line with a UTC timestamp, level, logger and the request
and job ids in context, for the API, the worker and the CLI alike (structlog over stdlib logging,
so uvicorn's, Dramatiq's and SQLAlchemy's records come out the same way).

The request id comes from the caller's `X-Request-ID` header (or is made here), is returned in the
response, stored on the jobs the request creates (`jobs.request_id`) and bound again by the worker
while it runs such a job: `grep <request id>` finds the API call, the job and the estimate.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Literal

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it is short and plain (it goes into logs and a database column).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

access_log = structlog.get_logger("flipwatch.access")


def configure_logging(level: str = "info", fmt: Literal["json", "console"] = "json") -> None:
    """Route every stdlib and structlog record through one handler on stderr as JSON (or
    coloured key=value lines for a terminal). Called once by each entry point."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access lines carry no timestamp or request id: RequestIdMiddleware logs them.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def current_request_id() -> str | None:
    """The request id bound for this request (or job), if any."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value is not None else None


def accepted_request_id(value: str | None) -> str:
    """The caller's id when it is plain and at most 128 characters, else a new one."""
    if value and _REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Binds `request_id` for the request's log lines, returns it in X-Request-ID and writes one
    access line (method, path, status, duration) when the response is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        request_id = accepted_request_id(header)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                access_log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    client=(scope.get("client") or ("", 0))[0],
                )
