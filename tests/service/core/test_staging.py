"""Staged objects: moved into place by the commit, deleted by a rollback, finished or deleted by
the sweep after a process died in between; on both storage backends (local directory, real S3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core import staging, storage
from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.storage import ObjectStore
from flipwatch.service.core.tables import Batch
from tests.conftest import truncate_all
from tests.factories import image_bytes, make_api_key, make_stream


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    yield make_sessionmaker(engine)
    truncate_all(engine)


@pytest.fixture
def store(backend_settings: Settings) -> ObjectStore:
    return storage.open_store(backend_settings)


def stage(session: Session, store: ObjectStore, batch_id: uuid.UUID, index: int) -> str:
    data = image_bytes(index)
    session.execute(text("SELECT 1"))  # a transaction, as every ingest has
    return staging.stage_image(
        session,
        store=store,
        batch_id=batch_id,
        digest=storage.sha256_hex(data),
        image_format="PNG",
        data=data,
    )


def incoming(store: ObjectStore) -> list[str]:
    return [info.key for info in store.list(staging.INCOMING)]


def test_staged_images_appear_at_their_key_only_when_the_transaction_commits(
    session_factory: sessionmaker[Session], store: ObjectStore
) -> None:
    with session_factory() as session:
        final = stage(session, store, uuid.uuid4(), 1)
        assert not store.exists(final)
        assert len(incoming(store)) == 1
        session.commit()
    assert store.get(final) == image_bytes(1)
    assert final == storage.image_key(storage.sha256_hex(image_bytes(1)), "PNG")
    assert incoming(store) == []


def test_a_rollback_deletes_the_staged_images(
    session_factory: sessionmaker[Session], store: ObjectStore
) -> None:
    with session_factory() as session:
        final = stage(session, store, uuid.uuid4(), 2)
        session.rollback()
    assert not store.exists(final)
    assert list(store.list()) == []


def test_closing_the_session_without_a_commit_deletes_them_too(
    session_factory: sessionmaker[Session], store: ObjectStore
) -> None:
    with session_factory() as session:
        final = stage(session, store, uuid.uuid4(), 3)
    assert not store.exists(final)
    assert list(store.list()) == []


def test_the_sweep_finishes_a_committed_batch_and_deletes_an_uncommitted_one(
    session_factory: sessionmaker[Session], store: ObjectStore
) -> None:
    with session_factory() as session:
        stream = make_stream(session)
        key, _ = make_api_key(session)
        batch = Batch(
            stream_id=stream.id,
            api_key_id=key.id,
            request_sha256="0" * 64,
            image_count=1,
            response={},
        )
        session.add(batch)
        session.commit()
    committed, lost = image_bytes(4), image_bytes(5)
    for batch_id, data in ((batch.id, committed), (uuid.uuid4(), lost)):
        # What a killed process leaves: staged objects, no move.
        store.put(f"{staging.incoming_prefix(batch_id)}{storage.sha256_hex(data)}.png", data)

    report = staging.sweep_incoming(session_factory, store, grace_seconds=0)

    assert report == staging.SweepReport(published=1, deleted=1)
    assert store.get(storage.image_key(storage.sha256_hex(committed), "PNG")) == committed
    assert not store.exists(storage.image_key(storage.sha256_hex(lost), "PNG"))
    assert incoming(store) == []


def test_the_sweep_leaves_batches_younger_than_the_grace_period(
    session_factory: sessionmaker[Session], store: ObjectStore
) -> None:
    staged = f"{staging.incoming_prefix(uuid.uuid4())}x.png"
    store.put(staged, b"x")

    assert staging.sweep_incoming(session_factory, store, grace_seconds=600).deleted == 0
    assert store.exists(staged)


def test_the_local_sweep_removes_temporary_files_of_interrupted_writes(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    store = storage.open_store(settings)
    temp = Path(settings.data_dir) / storage.TEMP_DIR / "x.png.abc.tmp"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half")

    assert staging.sweep_incoming(session_factory, store, grace_seconds=0).deleted == 1
    assert not temp.exists()
