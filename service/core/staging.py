"""Files that belong to a transaction: staged before the commit, moved into place after it.

A batch's images are written (fsynced) under `data_dir/incoming/<batch id>/` while its rows are
inserted. When the session commits they are renamed to their content-addressed paths; when it
rolls back (a rejected or failed request) they are deleted. So a refused batch leaves no file and a
row never points at a file that is not there. A process killed in between leaves a folder in
`incoming/`: `sweep_incoming` finishes the move if the batch row exists, and deletes it otherwise.

Publishing always replaces the final file (same name, same bytes), so a concurrent orphan sweep
that removed an unreferenced copy cannot leave a committed row without its file.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from flipwatch.service.core import storage
from flipwatch.service.core.tables import Batch

log = logging.getLogger(__name__)

INCOMING = "incoming"
_STAGED = "flipwatch_staged_files"
_ROLLBACK_TREES = "flipwatch_rollback_trees"

# Batch folders this process is writing now: never swept, whatever their age.
_active: set[str] = set()
_active_lock = threading.Lock()


def incoming_dir(data_dir: Path, batch_id: uuid.UUID) -> Path:
    return data_dir.resolve() / INCOMING / str(batch_id)


def stage_image(
    session: Session,
    *,
    data_dir: Path,
    batch_id: uuid.UUID,
    digest: str,
    image_format: str,
    data: bytes,
) -> Path:
    """Write an image for this session's transaction; returns the final path its row records.

    The file appears there when the transaction commits, and is gone if it rolls back.
    """
    final = storage.image_path(data_dir, digest, image_format)
    folder = incoming_dir(data_dir, batch_id)
    with _active_lock:
        _active.add(folder.name)
    staged = storage.write_atomic(folder / final.name, data)
    _staged_files(session).append((staged, final))
    return final


def remove_on_rollback(session: Session, folder: Path) -> None:
    """Delete `folder` (or file) written for this transaction (an extracted reference set, new
    weights) unless the transaction commits, so a refused or failed request leaves nothing."""
    trees = session.info.get(_ROLLBACK_TREES)
    if trees is None:
        trees = session.info[_ROLLBACK_TREES] = []
        event.listen(session, "after_commit", lambda s: s.info[_ROLLBACK_TREES].clear())
        event.listen(session, "after_transaction_end", _remove_trees_after_rollback)
    trees.append(folder)


def _remove_trees_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    trees = session.info.get(_ROLLBACK_TREES) or []
    for path in trees:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    trees.clear()


def _staged_files(session: Session) -> list[tuple[Path, Path]]:
    files = session.info.get(_STAGED)
    if files is None:
        files = session.info[_STAGED] = []
        event.listen(session, "after_commit", _publish_after_commit)
        event.listen(session, "after_transaction_end", _discard_after_rollback)
    return files


def _publish_after_commit(session: Session) -> None:
    files = session.info.get(_STAGED) or []
    for staged, final in files:
        try:
            publish(staged, final)
        except OSError:  # the sweep finishes it: the batch row exists
            log.exception("could not move %s into place; the orphan sweep will", staged)
    _forget(files)
    files.clear()


def _discard_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint: the outer transaction decides
    files = session.info.get(_STAGED) or []
    for staged, _ in files:
        staged.unlink(missing_ok=True)
    _forget(files)
    files.clear()


def _forget(files: list[tuple[Path, Path]]) -> None:
    folders = {staged.parent for staged, _ in files}
    for folder in folders:
        with _active_lock:
            _active.discard(folder.name)
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (another transaction of the same batch id) or already gone


def publish(staged: Path, final: Path) -> None:
    """Move a staged file to its final path (replacing an identical copy)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)


@dataclass(frozen=True)
class SweepReport:
    published: int = 0
    deleted: int = 0


def sweep_incoming(
    session_factory: sessionmaker[Session], data_dir: Path, *, grace_seconds: float
) -> SweepReport:
    """Finish or delete what killed uploads left in `incoming/` (folders older than the grace).

    A folder whose batch row exists committed before its process died: its files are moved into
    place. Any other folder belonged to a transaction that never committed: it is deleted.
    """
    root = data_dir.resolve() / INCOMING
    if not root.is_dir():
        return SweepReport()
    published = deleted = 0
    cutoff = time.time() - grace_seconds
    for folder in sorted(root.iterdir()):
        with _active_lock:
            if folder.name in _active:
                continue
        try:
            if folder.stat().st_mtime > cutoff:
                continue
            batch_id = uuid.UUID(folder.name)
        except (OSError, ValueError):
            batch_id = None
        committed = False
        if batch_id is not None:
            with session_factory() as session:
                committed = session.scalar(select(Batch.id).where(Batch.id == batch_id)) is not None
        if committed and folder.is_dir():
            published += _publish_folder(folder, data_dir)
        if folder.is_dir():
            deleted += sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
        else:
            folder.unlink(missing_ok=True)
            deleted += 1
    if published or deleted:
        log.warning("incoming sweep: %d file(s) moved into place, %d deleted", published, deleted)
    return SweepReport(published=published, deleted=deleted)


def _publish_folder(folder: Path, data_dir: Path) -> int:
    """Move a committed batch's staged images into place (its commit saw every write finish)."""
    formats = {ext: name for name, ext in storage.EXTENSIONS.items()}
    published = 0
    for staged in folder.iterdir():
        digest, _, ext = staged.name.partition(".")
        if staged.name.startswith(".") or ext not in formats:
            continue  # a temporary file of an interrupted write: removed with the folder
        publish(staged, storage.image_path(data_dir, digest, formats[ext]))
        published += 1
    return published
