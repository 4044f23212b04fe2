"""`flipwatch api`, `flipwatch migrate` and `flipwatch api-key create|list|revoke`.

Each handler builds Settings once (the entry point's job) and passes it on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.core.auth import create_api_key
from flipwatch.service.core.db import make_engine, make_sessionmaker, upgrade_database
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import ROLES, ApiKey, utcnow

log = logging.getLogger("flipwatch")


def register(subparsers: Any) -> None:
    api = subparsers.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--log-level", default=None)
    api.set_defaults(handler=run_api)

    migrate = subparsers.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(handler=run_migrate)

    api_key = subparsers.add_parser("api-key", help="manage API keys")
    key_commands = api_key.add_subparsers(dest="api_key_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key and print its token once")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default=None, help="a label, e.g. the pipeline's name")
    create.set_defaults(handler=run_api_key_create)
    listing = key_commands.add_parser("list", help="list keys (prefix, role, state)")
    listing.set_defaults(handler=run_api_key_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    revoke.set_defaults(handler=run_api_key_revoke)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from flipwatch.cli.worker import configure_observability
    from flipwatch.service.main import create_app

    settings = Settings()
    level = configure_observability(settings, args.log_level)
    if settings.effective_database_url.startswith("sqlite"):
        # Embedded mode: keep the local database at head so a first run just works.
        upgrade_database(settings)
    from flipwatch.cli.startup import estimator_model_check, make_dispatcher

    app = create_app(
        settings,
        dispatcher=make_dispatcher(settings),
        model_check=estimator_model_check(settings),
    )
    from flipwatch.service.api.server import uvicorn_options

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=level,
        log_config=None,  # keep the JSON handler configure_observability installed
        access_log=False,  # RequestIdMiddleware writes the access lines
        **uvicorn_options(settings),
    )
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    settings = Settings()
    upgrade_database(settings, revision=args.revision)
    print(
        f"database at {args.revision}: {_redacted(settings.effective_database_url)}",
        file=sys.stderr,
    )
    return 0


@contextmanager
def _command_session() -> Iterator[Session]:
    """A session on the configured database for one command; the engine is disposed after."""
    engine = make_engine(Settings())
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def run_api_key_create(args: argparse.Namespace) -> int:
    with _command_session() as session:
        key, token = create_api_key(session, role=args.role, name=args.name)
        session.commit()
    print(f"created {args.role} key {key.prefix}; the token is shown only once:", file=sys.stderr)
    print(token)
    return 0


def run_api_key_list(args: argparse.Namespace) -> int:
    with _command_session() as session:
        keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        print(f"{key.prefix}\t{key.role}\t{state}\t{key.name or ''}")
    return 0


def run_api_key_revoke(args: argparse.Namespace) -> int:
    with _command_session() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.prefix == args.prefix))
        if key is None:
            print(f"no API key with prefix {args.prefix!r}", file=sys.stderr)
            return 1
        key.revoked_at = key.revoked_at or utcnow()
        session.commit()
    print(f"revoked {args.prefix}", file=sys.stderr)
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
