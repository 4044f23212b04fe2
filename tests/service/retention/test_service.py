"""Retention and orphan sweeps against the real Postgres, with real ingests and stored objects, on
both storage backends (local directory, real S3 server)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.cli.startup import free_port
from flipwatch.service.batch.service import Upload, ingest_batch
from flipwatch.service.core import staging, storage
from flipwatch.service.core.db import make_engine, make_sessionmaker
from flipwatch.service.core.errors import BatchRejected
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Batch, Estimate, Image, Stream
from flipwatch.service.retention.service import (
    MaintenanceThread,
    enforce_retention,
    remove_unreferenced,
    sweep_orphans,
)
from tests.conftest import truncate_all
from tests.factories import image_bytes, make_api_key, make_estimate, make_job, make_stream

MAINTENANCE_LOGGER = "flipwatch.service.retention.service"


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


def image_objects(settings: Settings) -> set[str]:
    return {info.key for info in storage.open_store(settings).list("images/")}


def test_keeps_the_newest_images_and_every_window_an_unfinished_job_needs(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    settings = backend_settings
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
    assert image_objects(settings) == paths
    assert enforce_retention(session_factory, settings).images_deleted == 0  # idempotent


def test_deletes_images_older_than_the_age_limit_but_not_the_open_window(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    settings = backend_settings
    stream_id = stream_of_five_batches(session_factory, settings, retain_days=1)

    assert enforce_retention(session_factory, settings).images_deleted == 0
    report = enforce_retention(session_factory, settings, now_offset_s=2 * 86400)

    assert report.images_deleted == 16
    assert positions(session_factory, stream_id) == [16, 17]
    assert len(image_objects(settings)) == 2


def test_streams_without_a_policy_keep_everything(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    settings = backend_settings
    stream_id = stream_of_five_batches(session_factory, settings)
    assert enforce_retention(session_factory, settings, now_offset_s=10**8).images_deleted == 0
    assert len(positions(session_factory, stream_id)) == 18


def test_a_file_another_row_still_references_is_kept(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    settings = backend_settings
    stream_id = stream_of_five_batches(session_factory, settings)
    with session_factory() as session:
        path = session.scalar(select(Image.path).where(Image.stream_id == stream_id))
    store = storage.open_store(settings)
    orphan = storage.image_key("ab" * 32, "PNG")
    store.put(orphan, b"no row")

    removed = remove_unreferenced(session_factory, store, [path, orphan])

    assert removed == 1
    assert store.exists(path) and not store.exists(orphan)
    assert list(store.list("trash/")) == []


def test_the_orphan_sweep_removes_old_unreferenced_files_only(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    stream_of_five_batches(session_factory, settings)
    store = storage.open_store(settings)
    young, old = storage.image_key("cd" * 32, "PNG"), storage.image_key("ef" * 32, "PNG")
    store.put(young, b"y")
    store.put(old, b"o")
    an_hour_ago = time.time() - 3600
    for key in image_objects(settings) - {young}:  # local files can be aged, S3 objects cannot
        os.utime(Path(settings.data_dir) / key, (an_hour_ago, an_hour_ago))

    report = sweep_orphans(session_factory, settings, grace_seconds=600)

    assert report.files_deleted == 1
    assert not store.exists(old) and store.exists(young)
    assert len(image_objects(settings)) == 19


def test_the_orphan_sweep_removes_unreferenced_objects_and_trash_leftovers(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    settings = backend_settings
    stream_of_five_batches(session_factory, settings)
    store = storage.open_store(settings)
    referenced = image_objects(settings)
    orphan = storage.image_key("ef" * 32, "PNG")
    store.put(orphan, b"o")
    store.put("trash/0123.png", b"left by a process killed mid-removal")

    report = sweep_orphans(session_factory, settings, grace_seconds=0)

    assert report.files_deleted == 1
    assert image_objects(settings) == referenced
    assert list(store.list("trash/")) == []


def test_the_orphan_sweep_examines_a_bounded_slice_per_pass_and_resumes_after_it(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    """Each pass lists at most `scan_limit` image keys after the marker the last pass stored in
    the store itself (so a restart, or another API replica, goes on from there), and starts
    again from the first key once it reached the last."""
    settings = backend_settings
    store = storage.open_store(settings)
    orphans = [storage.image_key(digit * 64, "PNG") for digit in "01234"]  # in key order
    for key in orphans:
        store.put(key, b"no row")

    left = []
    for _ in range(3):
        sweep_orphans(session_factory, settings, grace_seconds=0, scan_limit=2)
        left.append(sorted(image_objects(settings)))
    store.put(orphans[0], b"orphaned after the pass went past it")
    fourth = sweep_orphans(session_factory, settings, grace_seconds=0, scan_limit=2)

    assert left == [orphans[2:], orphans[4:], []]
    assert fourth.files_deleted == 1 and image_objects(settings) == set()
    assert list(store.list("maintenance/")) == []  # a finished cycle leaves no marker


def test_a_rejected_batch_leaves_no_object(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    with session_factory() as session:
        stream = make_stream(session, window_size=64)
        key, _ = make_api_key(session)
        session.commit()
        uploads = [Upload("0.png", image_bytes(0)), Upload("bad.png", b"not an image")]
        with pytest.raises(BatchRejected):
            ingest_batch(
                session,
                settings=backend_settings,
                stream_id=stream.id,
                api_key=key,
                uploads=uploads,
                idempotency_key=None,
            )
        session.rollback()

    assert list(storage.open_store(backend_settings).list()) == []


def test_a_batch_failing_after_its_images_were_staged_leaves_no_object(
    session_factory: sessionmaker[Session], backend_settings: Settings
) -> None:
    with session_factory() as session:
        stream = make_stream(session, window_size=64)
        key, _ = make_api_key(session)
        session.commit()
        ingest_batch(
            session,
            settings=backend_settings,
            stream_id=stream.id,
            api_key=key,
            uploads=[Upload(f"{i}.png", image_bytes(i)) for i in range(3)],
            idempotency_key=None,
        )
        store = storage.open_store(backend_settings)
        assert len(list(store.list("incoming/"))) == 3  # staged, not yet in place
        session.rollback()  # e.g. the commit failed

    assert list(store.list()) == []


def committed_but_not_moved(factory: sessionmaker[Session], settings: Settings) -> tuple[str, str]:
    """What an API killed between a batch's commit and the move leaves: the image row, and its
    object still staged under incoming/. Returns (its key, its staged key)."""
    with factory() as session:
        stream = make_stream(session, window_size=64, auto_estimate=False)
        session.commit()
    ingest(factory, settings, stream.id, 0, 1)
    with factory() as session:
        image = session.scalars(select(Image).where(Image.stream_id == stream.id)).one()
    staged = staging.incoming_prefix(image.batch_id) + image.path.rsplit("/", 1)[1]
    storage.open_store(settings).move(image.path, staged)
    return image.path, staged


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


class TestMaintenanceThread:
    def test_a_failed_start_up_sweep_is_logged_with_its_reason_and_the_next_pass_retries_it(
        self,
        session_factory: sessionmaker[Session],
        backend_settings: Settings,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        settings = backend_settings.model_copy(
            update={"maintenance_interval_seconds": 0.2, "orphan_grace_seconds": 0}
        )
        key, staged = committed_but_not_moved(session_factory, settings)
        store = storage.open_store(settings)
        nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
        down = make_engine(settings, url=nowhere)  # nothing listens there
        first = iter([make_sessionmaker(down)])  # the start-up pass finds the database down
        thread = MaintenanceThread(lambda: next(first, session_factory), settings)
        caplog.set_level(logging.WARNING, logger=MAINTENANCE_LOGGER)
        thread.start()
        try:
            published = wait_for(lambda: store.exists(key))
        finally:
            thread.stop()
            down.dispose()

        assert published
        assert store.get(key) == image_bytes(0)
        assert not store.exists(staged)
        [failure] = [r.getMessage() for r in caplog.records if r.name == MAINTENANCE_LOGGER]
        assert failure.startswith(
            "start-up sweep of interrupted uploads failed: OperationalError: "
        )
        assert failure.endswith("; the next maintenance pass retries it")

    def test_with_maintenance_off_the_start_up_sweep_still_runs_once(
        self, session_factory: sessionmaker[Session], settings: Settings
    ) -> None:
        settings = settings.model_copy(
            update={"maintenance_interval_seconds": 0, "orphan_grace_seconds": 0}
        )
        key, staged = committed_but_not_moved(session_factory, settings)
        store = storage.open_store(settings)
        thread = MaintenanceThread(lambda: session_factory, settings)
        thread.start()
        try:
            published = wait_for(lambda: store.exists(key))
        finally:
            started = time.monotonic()
            thread.stop()
            stopped_after = time.monotonic() - started

        assert published and not store.exists(staged)
        assert stopped_after < 1.0  # the thread ended after its one pass
