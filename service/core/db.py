"""Engine, session factory and the declarative Base.

Nothing here runs at import: the FastAPI lifespan, the worker and the CLI call `make_engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from flipwatch.service.core.settings import Settings

# Named constraints: Alembic's SQLite batch mode needs names to alter or drop them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The one declarative base; its metadata is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(settings: Settings, *, url: str | None = None, **kwargs: Any) -> Engine:
    """Build the engine for `url` (default: the settings' effective URL).

    SQLite gets what a multi-threaded server needs: no same-thread check, foreign keys on, WAL.
    """
    url = url or settings.effective_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "connect_args": postgres_connect_args(settings),
    }
    if "poolclass" not in kwargs:  # a QueuePool, sized per process by the settings
        options["pool_size"] = settings.database_pool_size
        options["max_overflow"] = settings.database_max_overflow
    options.update(kwargs)
    return create_engine(url, **options)


def postgres_connect_args(settings: Settings) -> dict[str, Any]:
    """psycopg 3 arguments that keep a connection free of session state.

    `prepare_threshold=None` turns off psycopg's automatic server-side prepared statements, which
    live on one server connection: behind PgBouncer in transaction mode the next transaction may
    run on another one ("prepared statement does not exist"). Nothing else in flipwatch keeps
    session state (no session-level SET, advisory locks, LISTEN or temporary tables; row locks
    and SKIP LOCKED last one transaction), so every process is safe behind a transaction pooler.
    """
    return {
        "connect_timeout": settings.database_connect_timeout_seconds,
        "prepare_threshold": None,
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions keep loaded attributes after commit so responses can be built from them."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | None = None, *, settings: Settings | None = None) -> Any:
    """An Alembic Config for this repository's migrations, optionally pinned to `url`.

    Used by `flipwatch migrate` and the tests; `migrations/env.py` reads the URL from it.
    """
    from alembic.config import Config

    root = Path(__file__).resolve().parents[2]  # service/core/db.py -> the repository
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["configure_logger"] = False
    if settings is not None:
        config.attributes["settings"] = settings
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(settings: Settings, *, url: str | None = None, revision: str = "head") -> None:
    """`alembic upgrade head` against the settings' database (or `url`)."""
    from alembic import command

    command.upgrade(
        alembic_config(url or settings.effective_database_url, settings=settings), revision
    )
