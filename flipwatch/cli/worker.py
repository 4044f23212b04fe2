"""`flipwatch worker` and `flipwatch serve`.

`serve` with no configuration is embedded mode: SQLite under the data directory, migrations
applied, the API and an in-process worker thread in one process, and an admin key written to
data_dir/admin-key.txt. With FLIPWATCH_REDIS_URL set it serves only the API and sends job ids to
Redis for `flipwatch worker` processes. Settings are built once here and passed down.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from flipwatch.cli.startup import ServerStack, apply_torch_threads, build_server
from flipwatch.service.core.settings import Settings


def register(subparsers: Any) -> None:
    worker = subparsers.add_parser(
        "worker", help="run a job worker (needs FLIPWATCH_REDIS_URL and FLIPWATCH_DATABASE_URL)"
    )
    worker.add_argument(
        "--metrics-port", type=int, default=9191, help="Prometheus port (0: no metrics server)"
    )
    worker.add_argument(
        "--queues",
        default=None,
        help="queues to consume, comma-separated, from estimates.gpu, estimates.cpu, "
        "calibrations (default: FLIPWATCH_WORKER_QUEUES, else all)",
    )
    worker.add_argument("--log-level", default=None)
    worker.set_defaults(handler=run_worker_command)

    serve = subparsers.add_parser(
        "serve", help="run the API with an in-process worker (embedded mode: no Postgres/Redis)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--data-dir", type=Path, default=None, help="images, weights, SQLite (default .flipwatch)"
    )
    serve.add_argument("--log-level", default=None)
    serve.set_defaults(handler=run_serve_command)


def run_worker_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flipwatch.workers.main import run_worker

    try:
        settings = Settings(**({"worker_queues": args.queues} if args.queues else {}))
    except ValidationError as exc:
        print(f"flipwatch worker: {exc}", file=sys.stderr)
        return 2
    configure_observability(settings, args.log_level)
    if settings.embedded:
        print(
            "flipwatch worker needs FLIPWATCH_REDIS_URL (and FLIPWATCH_DATABASE_URL for Postgres);"
            " without Redis, `flipwatch serve` runs API and worker in one process",
            file=sys.stderr,
        )
        return 2
    apply_torch_threads(settings)
    return run_worker(settings, metrics_port=args.metrics_port or None)


def run_serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from flipwatch.service.api.server import uvicorn_options

    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    level = configure_observability(settings, args.log_level)
    apply_torch_threads(settings)
    stack = build_server(settings)
    try:
        if stack.admin_key_path is not None:
            _announce_admin_key(stack, host=args.host, port=args.port)
        uvicorn.run(
            stack.app,
            host=args.host,
            port=args.port,
            log_level=level,
            log_config=None,  # keep the JSON handler configure_observability installed
            access_log=False,  # RequestIdMiddleware writes the access lines
            **uvicorn_options(settings),
        )
    finally:
        stack.close()
    return 0


def _announce_admin_key(stack: ServerStack, *, host: str, port: int) -> None:
    where = stack.admin_key_path
    if stack.admin_key_created:
        print(f"created an admin API key: {stack.admin_key}", file=sys.stderr)
    print(f"admin API key stored in {where} (mode 0600); try:", file=sys.stderr)
    print(
        f'  curl -H "Authorization: Bearer $(cat {where})" http://{host}:{port}/v1/models',
        file=sys.stderr,
    )


def configure_observability(settings: Settings, level: str | None) -> str:
    """JSON logs (or console lines, FLIPWATCH_LOG_FORMAT) and, when configured, tracing; returns
    the log level in force (--log-level over FLIPWATCH_LOG_LEVEL)."""
    from flipwatch.service.core.logging import configure_logging
    from flipwatch.service.core.tracing import configure_tracing

    level = level or settings.log_level
    configure_logging(level, settings.log_format)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    configure_tracing(settings)
    return level
