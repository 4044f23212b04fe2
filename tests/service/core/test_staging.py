"""Staged files: moved into place by the commit, deleted by a rollback, finished or deleted by
the sweep after a process died in between."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core import staging, storage
from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.tables import Batch
from tests.conftest import truncate_all
from tests.factories import image_bytes, make_api_key, make_stream


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    yield make_sessionmaker(engine)
    truncate_all(engine)


def stage(session: Session, data_dir: Path, batch_id: uuid.UUID, index: int) -> Path:
    data = image_bytes(index)
    session.execute(text("SELECT 1"))  # a transaction, as every ingest has
    return staging.stage_image(
        session,
        data_dir=data_dir,
        batch_id=batch_id,
        digest=storage.sha256_hex(data),
        image_format="PNG",
        data=data,
    )


def incoming_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "incoming").rglob("*") if p.is_file()]


def test_staged_images_appear_at_their_path_only_when_the_transaction_commits(
    session_factory: sessionmaker[Session], data_dir: Path
) -> None:
    with session_factory() as session:
        final = stage(session, data_dir, uuid.uuid4(), 1)
        assert not final.exists()
        assert len(incoming_files(data_dir)) == 1
        session.commit()
    assert final.read_bytes() == image_bytes(1)
    assert incoming_files(data_dir) == []
    assert list((data_dir / "incoming").iterdir()) == []


def test_a_rollback_deletes_the_staged_images(
    session_factory: sessionmaker[Session], data_dir: Path
) -> None:
    with session_factory() as session:
        final = stage(session, data_dir, uuid.uuid4(), 2)
        session.rollback()
    assert not final.exists()
    assert incoming_files(data_dir) == []


def test_closing_the_session_without_a_commit_deletes_them_too(
    session_factory: sessionmaker[Session], data_dir: Path
) -> None:
    with session_factory() as session:
        final = stage(session, data_dir, uuid.uuid4(), 3)
    assert not final.exists()
    assert incoming_files(data_dir) == []


def test_the_sweep_finishes_a_committed_batch_and_deletes_an_uncommitted_one(
    session_factory: sessionmaker[Session], data_dir: Path
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
        folder = staging.incoming_dir(data_dir, batch_id)  # what a killed process leaves
        storage.write_atomic(folder / f"{storage.sha256_hex(data)}.png", data)
        (folder / ".partial.png.x.tmp").write_bytes(b"half")

    report = staging.sweep_incoming(session_factory, data_dir, grace_seconds=0)

    assert report == staging.SweepReport(published=1, deleted=3)  # 2 partial writes + lost
    assert storage.image_path(data_dir, storage.sha256_hex(committed), "PNG").exists()
    assert not storage.image_path(data_dir, storage.sha256_hex(lost), "PNG").exists()
    assert list((data_dir / "incoming").iterdir()) == []


def test_the_sweep_leaves_folders_younger_than_the_grace_period(
    session_factory: sessionmaker[Session], data_dir: Path
) -> None:
    folder = staging.incoming_dir(data_dir, uuid.uuid4())
    storage.write_atomic(folder / "x.png", b"x")

    assert staging.sweep_incoming(session_factory, data_dir, grace_seconds=600).deleted == 0
    assert (folder / "x.png").exists()
