"""Fixtures of the bad-input suite: the rows a hostile request aims at, what is stored, and a real
uvicorn server for what only the HTTP layer sees (over-long heads)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from flipwatch.service.api.server import uvicorn_options
from flipwatch.service.core.db import Base, make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.main import create_app
from tests.conftest import _token
from tests.factories import make_alert_rule, make_model, make_stream
from tests.servers import serve_in_thread


@dataclass(frozen=True)
class World:
    """What the corpus' requests name: a stream (window 64, 10-class model), a 2-class model to
    calibrate, an alert rule, and a token per role."""

    stream_id: str
    model_id: str
    calibration_model_id: str
    rule_id: str
    tokens: dict[str, str]


@pytest.fixture
def world(session: Session) -> World:
    stream = make_stream(session, window_size=64)
    two_classes = make_model(session, calibrated=False, spec={"num_classes": 2})
    rule = make_alert_rule(session, stream=stream)
    session.commit()
    return World(
        stream_id=str(stream.id),
        model_id=str(stream.model_id),
        calibration_model_id=str(two_classes.id),
        rule_id=str(rule.id),
        tokens={role: _token(session, role) for role in ("admin", "ingest", "read")},
    )


@dataclass(frozen=True)
class Stored:
    """Rows per table and files under data_dir (images, incoming/ staging, calibrations, tmp)."""

    rows: dict[str, int]
    files: list[str]


def stored(session: Session, data_dir: Path) -> Stored:
    rows = {
        table.name: session.scalar(select(func.count()).select_from(table)) or 0
        for table in Base.metadata.sorted_tables
    }
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if not p.is_dir())
    return Stored(rows=rows, files=files)


@dataclass(frozen=True)
class LiveServer:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
def live_server(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app under uvicorn with flipwatch's HTTP protocol (header limit answered as 431), on a
    loopback port; requests that pass the HTTP layer reach the test database."""
    data_dir = tmp_path_factory.mktemp("live-data")
    settings = Settings(
        environment="dev",
        data_dir=data_dir,
        database_url=engine.url.render_as_string(hide_password=False),
        redis_url=None,
        max_header_bytes=32 * 1024,
        webhook_poll_seconds=0,
        maintenance_interval_seconds=0,
    )
    app = create_app(settings, session_factory=make_sessionmaker(engine))
    with serve_in_thread(app, **uvicorn_options(settings)) as url:
        yield LiveServer(url=url, settings=settings)
