"""A session on either database flipwatch runs on: the metrics summaries must hold on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from flipwatch.service.core.db import make_engine, upgrade_database
from flipwatch.service.core.settings import Settings


@pytest.fixture(params=["postgres", "sqlite"])
def any_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    """The rolled-back Postgres test session, or a session on a migrated SQLite file."""
    if request.param == "postgres":
        yield request.getfixturevalue("session")
        return
    url = f"sqlite:///{tmp_path / 'flipwatch.db'}"
    settings = Settings(database_url=url, redis_url=None, data_dir=tmp_path)
    upgrade_database(settings, url=url)
    engine = make_engine(settings, url=url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()
