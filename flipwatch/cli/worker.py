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
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(handler=run_worker_command)

    serve = subparsers.add_parser(
        "serve", help="run the API with an in-process worker (embedded mode: no Postgres/Redis)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--data-dir", type=Path, default=None, help="images, weights, SQLite (default .flipwatch)"
    )
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=run_serve_command)


def run_worker_command(args: argparse.Namespace) -> int:
    from flipwatch.workers.main import run_worker

    _configure_logging(args.log_level)
    settings = Settings()
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

    _configure_logging(args.log_level)
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    apply_torch_threads(settings)
    stack = build_server(settings)
    try:
        if stack.admin_key_path is not None:
            _announce_admin_key(stack, host=args.host, port=args.port)
        uvicorn.run(
            stack.app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
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


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
