"""Retention and orphan sweeps against the real Postgres, with real ingests and files."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.batch.service import Upload, ingest_batch
from flipwatch.service.core import storage
from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Batch, Estimate, Image, Stream
from flipwatch.service.retention.service import (
    enforce_retention,
    remove_unreferenced,
    sweep_orphans,
)
from tests.conftest import truncate_all
from tests.factories import image_bytes, make_api_key, make_estimate, make_job, make_stream


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    yield make_sessionmaker(engine)
    truncate_all(engine)


def ingest(
    factory: sessionmaker[Session], settings: Settings, stream_id: uuid.UUID, first: int, n: int
) -> None:
    with factory() as session:
        key, _ = make_api_key(session)
        uploads = [Upload(f"{i}.png", image_bytes(i)) for i in range(first, first + n)]
        ingest_batch(
            session,
            settings=settings,
            stream_id=stream_id,
            api_key=key,
            uploads=uploads,
            idempotency_key=None,
        )
        session.commit()


def stream_of_five_batches(
    factory: sessionmaker[Session], settings: Settings, **policy: object
) -> uuid.UUID:
    """Windows of 4: batches 0-3 fill windows 0-3, batch 4 puts 2 images in open window 4."""
    with factory() as session:
        stream = make_stream(session, window_size=4, auto_estimate=False, **policy)
        session.commit()
    for b in range(4):
        ingest(factory, settings, stream.id, 4 * b, 4)
    ingest(factory, settings, stream.id, 16, 2)
    return stream.id


def positions(factory: sessionmaker[Session], stream_id: uuid.UUID) -> list[int]:
    with factory() as session:
        return list(
            session.scalars(
                select(Image.position).where(Image.stream_id == stream_id).order_by(Image.position)
            )
        )


def image_files(data_dir: Path) -> set[str]:
    return {str(p) for p in (data_dir / "images").rglob("*") if p.is_file()}


def test_keeps_the_newest_images_and_every_window_an_unfinished_job_needs(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    stream_id = stream_of_five_batches(session_factory, settings, retain_images=4)
    with session_factory() as session:
        stream = session.get(Stream, stream_id)
        assert stream is not None
        make_job(session, stream=stream, window_index=1)
        make_estimate(session, stream=stream, window_index=0)
        session.commit()

    report = enforce_retention(session_factory, settings)

    # positions < 18 - 4 expire, except window 1 (its job is queued) and the open window 4
    assert positions(session_factory, stream_id) == [4, 5, 6, 7, 14, 15, 16, 17]
    assert (report.images_deleted, report.files_deleted) == (10, 10)
    assert report.batches_deleted == 2  # batches 0 and 2 lost every image; batch 3 kept two
    with session_factory() as session:
        paths = set(session.scalars(select(Image.path)))
        assert session.scalar(select(func.count()).select_from(Batch)) == 3
        assert session.scalar(select(func.count()).select_from(Estimate)) == 1
    assert image_files(settings.data_dir) == paths
    assert enforce_retention(session_factory, settings).images_deleted == 0  # idempotent


def test_deletes_images_older_than_the_age_limit_but_not_the_open_window(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    stream_id = stream_of_five_batches(session_factory, settings, retain_days=1)

    assert enforce_retention(session_factory, settings).images_deleted == 0
    report = enforce_retention(session_factory, settings, now_offset_s=2 * 86400)

    assert report.images_deleted == 16
    assert positions(session_factory, stream_id) == [16, 17]
    assert len(image_files(settings.data_dir)) == 2


def test_streams_without_a_policy_keep_everything(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    stream_id = stream_of_five_batches(session_factory, settings)
    assert enforce_retention(session_factory, settings, now_offset_s=10**8).images_deleted == 0
    assert len(positions(session_factory, stream_id)) == 18


def test_a_file_another_row_still_references_is_kept(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    stream_id = stream_of_five_batches(session_factory, settings)
    with session_factory() as session:
        path = session.scalar(select(Image.path).where(Image.stream_id == stream_id))
    orphan = storage.image_path(settings.data_dir, "ab" * 32, "PNG")
    storage.write_atomic(orphan, b"no row")

    removed = remove_unreferenced(session_factory, settings.data_dir, [path, str(orphan)])

    assert removed == 1
    assert Path(path).exists() and not orphan.exists()


def test_the_orphan_sweep_removes_old_unreferenced_files_only(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    stream_of_five_batches(session_factory, settings)
    young = storage.write_atomic(storage.image_path(settings.data_dir, "cd" * 32, "PNG"), b"y")
    old = storage.write_atomic(storage.image_path(settings.data_dir, "ef" * 32, "PNG"), b"o")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    for path in image_files(settings.data_dir):
        if path != str(young):
            os.utime(path, (an_hour_ago, an_hour_ago))

    report = sweep_orphans(session_factory, settings, grace_seconds=600)

    assert report.files_deleted == 1
    assert not old.exists() and young.exists()
    assert len(image_files(settings.data_dir)) == 19
