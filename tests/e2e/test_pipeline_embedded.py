"""Embedded mode end to end: `flipwatch serve` with no configuration, i.e. SQLite in a data dir
and the in-process worker thread; the same pipeline as with Postgres and Redis.
"""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from flipwatch.cli.startup import ADMIN_KEY_FILE, ServerStack, build_server
from flipwatch.demos.http import FlipwatchClient
from flipwatch.service.core.tables import Estimate
from flipwatch.workers.broker import InProcessWorker
from tests.e2e.conftest import E2E_SUITE, E2E_WINDOW, Pipeline, e2e_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ServerStack]:
    stack = build_server(e2e_settings(tmp_path / "data"), calibration_suite=E2E_SUITE)
    try:
        yield stack
    finally:
        stack.close()


def test_pipeline_estimates_windows_in_one_process_on_sqlite(
    embedded: ServerStack, pipeline: Pipeline
) -> None:
    assert isinstance(embedded.worker, InProcessWorker)
    assert embedded.settings.effective_database_url.startswith("sqlite:///")
    key_file = embedded.settings.data_dir / ADMIN_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == embedded.admin_key

    with TestClient(embedded.app) as http:
        run = pipeline(FlipwatchClient(http, key_file.read_text().strip()))

    with embedded.session_factory() as session:
        rows = {
            name: list(
                session.scalars(
                    select(Estimate).where(Estimate.stream_id == uuid.UUID(stream["id"]))
                )
            )
            for name, stream in (("clean", run.clean_stream), ("shifted", run.shifted_stream))
        }
    (clean,), (shifted,) = rows["clean"], rows["shifted"]
    assert clean.image_count == shifted.image_count == E2E_WINDOW
    assert str(clean.job_id) == run.clean_job["id"]
    assert 0.0 <= shifted.estimated_accuracy < clean.estimated_accuracy <= 1.0
    print(f"clean {clean.estimated_accuracy:.3f}, shifted {shifted.estimated_accuracy:.3f}")


def test_restart_reuses_the_admin_key_of_the_data_dir(tmp_path: Path) -> None:
    settings = e2e_settings(tmp_path / "data")
    first = build_server(settings, start_worker=False)
    first.close()
    second = build_server(settings, start_worker=False)
    try:
        assert second.admin_key == first.admin_key
        assert first.admin_key_created and not second.admin_key_created
    finally:
        second.close()
