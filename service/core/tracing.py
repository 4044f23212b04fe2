"""Optional OpenTelemetry tracing of FastAPI, SQLAlchemy and the worker's jobs.

Off unless FLIPWATCH_OTEL_ENDPOINT is set (an OTLP/HTTP traces URL, e.g.
http://otel-collector:4318/v1/traces); the packages are the `otel` extra, imported only then.
The entry point calls `configure_tracing` once; `create_app` and the worker ask `tracing_enabled`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flipwatch.service.core.settings import Settings

_tracer: Any = None  # set by configure_tracing; None means tracing is off
_provider: Any = None


def configure_tracing(settings: Settings, *, exporter: Any = None) -> bool:
    """Install a tracer provider exporting to settings.otel_endpoint (or to `exporter`, for
    tests). Returns whether tracing is on."""
    global _tracer, _provider
    if exporter is None and not settings.otel_endpoint:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "FLIPWATCH_OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'flipwatch[otel]'"
        ) from exc
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(settings.otel_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("flipwatch")
    return True


def reset_tracing() -> None:
    """Turn tracing off again for apps built from now on (tests)."""
    global _tracer, _provider
    _tracer = _provider = None


def tracing_enabled() -> bool:
    return _tracer is not None


def instrument_app(app: Any) -> None:
    """Trace every request of `app` (FastAPI instrumentation), when tracing is on."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider)


def instrument_engine(engine: Any) -> None:
    """Trace the SQL statements of `engine`, when tracing is on."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=_provider)


@contextmanager
def job_span(job_id: uuid.UUID, request_id: str | None) -> Iterator[None]:
    """A span around one job run in the worker (no-op when tracing is off)."""
    if _tracer is None:
        yield
        return
    attributes = {"flipwatch.job_id": str(job_id)}
    if request_id:
        attributes["flipwatch.request_id"] = request_id
    with _tracer.start_as_current_span("estimation.run_job", attributes=attributes):
        yield
