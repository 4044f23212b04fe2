"""The FastAPI application: `create_app(settings, *, dispatcher=None)`.

The lifespan builds the engine and sessionmaker (unless one is passed in, as tests do), creates
the bootstrap admin key when configured and runs the maintenance thread (whose first pass sweeps
interrupted uploads, in the background) and the alert webhook deliverer thread. Each app has
its own metrics registry (app.state.metrics). Nothing is created at import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.alert.webhooks import WebhookDeliverer
from flipwatch.service.api.docs import mount_docs_assets
from flipwatch.service.api.openapi import complete_openapi
from flipwatch.service.api.problems import register_problem_handlers
from flipwatch.service.api.routes import (
    alerts,
    batches,
    calibrations,
    docs,
    estimates,
    health,
    jobs,
    labels,
    metrics,
    models,
    status_page,
    streams,
)
from flipwatch.service.batch.decoding import DecodePool
from flipwatch.service.core.auth import ensure_api_key
from flipwatch.service.core.db import make_engine, make_sessionmaker
from flipwatch.service.core.dispatch import JobDispatcher, NullDispatcher
from flipwatch.service.core.logging import RequestIdMiddleware
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tracing import instrument_app, instrument_engine
from flipwatch.service.metrics.http import ApiMetrics, MetricsMiddleware, serve_metrics
from flipwatch.service.model.service import ModelCheck
from flipwatch.service.retention.service import MaintenanceThread
from flipwatch.service.status.service import STATUS_FILES


def redis_check(url: str) -> Callable[[], None]:
    """A readiness probe for the broker: PING with a short timeout (redis-py, not dramatiq)."""

    def check() -> None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()

    return check


def create_app(
    settings: Settings,
    *,
    dispatcher: JobDispatcher | None = None,
    session_factory: sessionmaker[Session] | None = None,
    broker_check: Callable[[], None] | None = None,
    model_check: ModelCheck | None = None,
) -> FastAPI:
    """Build the API. `dispatcher` receives job ids after commit (default: NullDispatcher);
    `model_check` proves a registered model loads (the start-up code passes the estimator's)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if app.state.sessionmaker is None:
            engine = make_engine(settings)
            instrument_engine(engine)
            app.state.sessionmaker = make_sessionmaker(engine)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.bootstrap_admin_key:
            with app.state.sessionmaker() as session:
                ensure_api_key(
                    session, token=settings.bootstrap_admin_key, role="admin", name="bootstrap"
                )
                session.commit()
        if settings.validation_processes > 0:
            app.state.decode_pool = DecodePool(settings.validation_processes)
        # Its first pass, at once and in its own thread, finishes or deletes the uploads a killed
        # process left in incoming/: a hung or unreachable store never holds up start-up, so
        # /healthz answers while /readyz reports the store.
        maintenance = MaintenanceThread(lambda: app.state.sessionmaker, settings)
        maintenance.start()
        deliverer = None
        if settings.webhook_poll_seconds > 0:
            deliverer = WebhookDeliverer(lambda: app.state.sessionmaker, settings)
            deliverer.start()
        app.state.webhook_deliverer = deliverer
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = serve_metrics(
                app.state.metrics, host=settings.metrics_host, port=settings.metrics_port
            )
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            maintenance.stop()
            if app.state.decode_pool is not None:
                app.state.decode_pool.shutdown()
                app.state.decode_pool = None
            if deliverer is not None:
                deliverer.stop()
            if engine is not None:
                engine.dispose()

    app = FastAPI(
        title="flipwatch",
        version="1.0.0",
        summary="Label-free accuracy estimates for deployed image classifiers (Weighted Flips).",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        # Served by routes/docs.py: public in dev, behind a key in prod.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.openapi = lambda: complete_openapi(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.sessionmaker = session_factory
    app.state.dispatcher = dispatcher or NullDispatcher()
    if broker_check is None and settings.redis_url:
        broker_check = redis_check(settings.redis_url)
    app.state.broker_check = broker_check
    app.state.model_check = model_check
    app.state.webhook_deliverer = None
    app.state.decode_pool = None  # a DecodePool while running, with validation_processes > 0
    app.state.metrics = ApiMetrics(
        lambda: app.state.sessionmaker, error_windows=settings.estimator_error_windows
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Outermost: the request id is bound before anything else runs or logs.
    app.add_middleware(RequestIdMiddleware)
    register_problem_handlers(app)
    # With FLIPWATCH_METRICS_PORT, /metrics is served only on that (internal) port.
    for module in (
        docs,
        health,
        *((metrics,) if settings.metrics_port is None else ()),
        status_page,
        models,
        calibrations,
        streams,
        batches,
        estimates,
        jobs,
        alerts,
        labels,
    ):
        app.include_router(module.router)
    mount_docs_assets(app)
    instrument_app(app)  # a no-op unless FLIPWATCH_OTEL_ENDPOINT configured tracing
    # The status page's script and styles, from the installed package.
    app.mount("/static", StaticFiles(directory=str(STATUS_FILES / "static")), name="static")
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name
