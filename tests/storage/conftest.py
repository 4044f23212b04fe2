"""Both storage backends behind one fixture: every contract test runs on the local directory and on
a real S3 server (`rclone serve s3`, started once per run by `s3_server` in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from tests.conftest import s3_storage


@pytest.fixture(params=["local", "s3"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Storage settings of one backend: a fresh data dir, or a fresh prefix in the test bucket."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    fields: dict[str, object] = {"data_dir": data_dir}
    if request.param == "s3":
        fields |= s3_storage(request.getfixturevalue("s3_server"))
    return Settings(**fields)


@pytest.fixture
def store(backend_settings: Settings) -> storage.ObjectStore:
    return storage.open_store(backend_settings)
