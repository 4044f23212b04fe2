"""Fault-suite fixtures: a private Redis per test, a private Postgres cluster per session, a fresh
migrated database per test (on the shared server, or on the private cluster), the tiny model's
weights, and `deployment`/`embedded`, which kill their processes at the end and print their logs
when a test fails.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flipwatch.service.core.db import upgrade_database
from flipwatch.service.core.settings import Settings
from tests.conftest import create_database, drop_database
from tests.faults.deployment import Deployment, save_tiny_imagenet_weights
from tests.faults.harness import PostgresCluster, RedisServer, postgres_bin_dir


@pytest.fixture(scope="session")
def tiny_imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_imagenet_weights(tmp_path_factory.mktemp("weights") / "tiny.pt")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A private Postgres cluster the outage tests stop and start (never the shared server)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="flipwatch-faults-pg-"))
    cluster = PostgresCluster(root, bin_dir)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _migrated(url: str) -> str:
    upgrade_database(Settings(database_url=url, redis_url=None), url=url)
    return url


@pytest.fixture
def fault_database() -> Iterator[str]:
    """A fresh migrated database on the shared Postgres server, dropped afterwards."""
    url = _migrated(create_database("flipwatch_faults"))
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def private_database(pg_cluster: PostgresCluster) -> str:
    """A fresh migrated database on the private cluster (dropped with the cluster)."""
    if not pg_cluster.is_running():
        pg_cluster.start()
    import secrets

    return _migrated(pg_cluster.create_database(f"faults_{secrets.token_hex(4)}"))


def _deployment(request: pytest.FixtureRequest, deployment: Deployment) -> Iterator[Deployment]:
    try:
        yield deployment
    finally:
        deployment.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(deployment.logs())


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, fault_database: str, redis_server: RedisServer
) -> Iterator[Deployment]:
    """Production mode on the shared Postgres (a database of its own) and a private Redis."""
    yield from _deployment(request, Deployment(tmp_path, fault_database, redis_server))


@pytest.fixture
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """Embedded mode: one `flipwatch serve` process on SQLite."""
    yield from _deployment(request, Deployment(tmp_path, ""))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
