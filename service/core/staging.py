"""Objects that belong to a transaction: staged before the commit, moved into place after it.

A batch's images are written under `incoming/<batch id>/` in the object store while its rows are
inserted. When the session commits they are moved to their content-addressed keys; when it rolls
back (a rejected or failed request) they are deleted. So a refused batch leaves no object and a row
never points at a key that is not there. A process killed in between leaves objects under
`incoming/`: `sweep_incoming` finishes the move if the batch row exists, and deletes them otherwise.
The same holds on both backends (a local directory or an S3 bucket): only `ObjectStore` calls.

Publishing always replaces the final object (same name, same bytes), so a concurrent orphan sweep
that removed an unreferenced copy cannot leave a committed row without its object.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from flipwatch.service.core import storage
from flipwatch.service.core.storage import ObjectStore
from flipwatch.service.core.tables import Batch

log = logging.getLogger(__name__)

INCOMING = "incoming/"
_STAGED = "flipwatch_staged_objects"
_ROLLBACK = "flipwatch_rollback_objects"

# Batch ids this process is writing now: never swept, whatever their age.
_active: set[str] = set()
_active_lock = threading.Lock()


def incoming_prefix(batch_id: uuid.UUID) -> str:
    return f"{INCOMING}{batch_id}/"


def stage_image(
    session: Session,
    *,
    store: ObjectStore,
    batch_id: uuid.UUID,
    digest: str,
    image_format: str,
    data: bytes,
) -> str:
    """Write an image for this session's transaction; returns the key its row records.

    The object appears there when the transaction commits, and is gone if it rolls back.
    """
    final = storage.image_key(digest, image_format)
    staged = incoming_prefix(batch_id) + final.rsplit("/", 1)[1]
    with _active_lock:
        _active.add(str(batch_id))
    store.put(staged, data)
    _staged_objects(session, store).append((staged, final))
    return final


def remove_on_rollback(session: Session, store: ObjectStore, key_or_prefix: str) -> None:
    """Delete an object (or every object under a prefix ending in '/') written for this
    transaction (an uploaded reference set, new weights) unless the transaction commits, so a
    refused or failed request leaves nothing."""
    pending = session.info.get(_ROLLBACK)
    if pending is None:
        pending = session.info[_ROLLBACK] = []
        event.listen(session, "after_commit", lambda s: s.info[_ROLLBACK].clear())
        event.listen(session, "after_transaction_end", _remove_after_rollback)
    pending.append((store, key_or_prefix))


def _remove_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    pending = session.info.get(_ROLLBACK) or []
    for store, key in pending:
        try:
            if key.endswith("/"):
                storage.delete_prefix(store, key)
            else:
                store.delete(key)
        except Exception:  # noqa: BLE001 - the store may be down: the orphan sweep retries
            log.warning("could not delete %s after a rollback", key, exc_info=True)
    pending.clear()


def _staged_objects(session: Session, store: ObjectStore) -> list[tuple[str, str]]:
    staged = session.info.get(_STAGED)
    if staged is None:
        staged = session.info[_STAGED] = {"store": store, "objects": []}
        event.listen(session, "after_commit", _publish_after_commit)
        event.listen(session, "after_transaction_end", _discard_after_rollback)
    staged["store"] = store
    return staged["objects"]


def _publish_after_commit(session: Session) -> None:
    staged = session.info.get(_STAGED)
    if not staged:
        return
    store, objects = staged["store"], staged["objects"]
    for src, dst in objects:
        try:
            store.move(src, dst)
        except Exception:  # noqa: BLE001 - the sweep finishes it: the batch row exists
            log.exception("could not move %s into place; the orphan sweep will", src)
    _forget(objects)
    objects.clear()


def _discard_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint: the outer transaction decides
    staged = session.info.get(_STAGED)
    if not staged:
        return
    store, objects = staged["store"], staged["objects"]
    for src, _ in objects:
        try:
            store.delete(src)
        except Exception:  # noqa: BLE001 - the sweep deletes it: no batch row
            log.warning("could not delete staged %s; the orphan sweep will", src, exc_info=True)
    _forget(objects)
    objects.clear()


def _forget(objects: list[tuple[str, str]]) -> None:
    for src, _ in objects:
        with _active_lock:
            _active.discard(src.split("/")[1])


@dataclass(frozen=True)
class SweepReport:
    published: int = 0
    deleted: int = 0


def sweep_incoming(
    session_factory: sessionmaker[Session], store: ObjectStore, *, grace_seconds: float
) -> SweepReport:
    """Finish or delete what killed uploads left under `incoming/` (batches whose newest staged
    object is older than the grace).

    A batch whose row exists committed before its process died: its objects are moved into
    place. Any other batch belonged to a transaction that never committed: they are deleted.
    Interrupted writes themselves (temporary files, multipart uploads) go too.
    """
    batches: dict[str, list[storage.ObjectInfo]] = defaultdict(list)
    for info in store.list(INCOMING):
        batches[info.key.split("/")[1]].append(info)
    published = deleted = 0
    cutoff = time.time() - grace_seconds
    formats = {ext: name for name, ext in storage.EXTENSIONS.items()}
    for name, objects in sorted(batches.items()):
        with _active_lock:
            if name in _active:
                continue
        if max(info.modified for info in objects) > cutoff:
            continue
        try:
            batch_id: uuid.UUID | None = uuid.UUID(name)
        except ValueError:
            batch_id = None
        committed = False
        if batch_id is not None:
            with session_factory() as session:
                committed = session.scalar(select(Batch.id).where(Batch.id == batch_id)) is not None
        for info in objects:
            filename = info.key.rsplit("/", 1)[1]
            digest, _, ext = filename.partition(".")
            if committed and ext in formats and info.key.count("/") == 2:
                store.move(info.key, storage.image_key(digest, formats[ext]))
                published += 1
            else:
                store.delete(info.key)
                deleted += 1
    deleted += store.abort_incomplete(grace_seconds)
    if published or deleted:
        log.warning("incoming sweep: %d object(s) moved into place, %d deleted", published, deleted)
    return SweepReport(published=published, deleted=deleted)
