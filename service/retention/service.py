"""Retention and orphan sweeps: bounded disk use without losing what a job still needs.

`enforce_retention` deletes, per stream, images past its `retain_images` count or older than its
`retain_days`, then batches left without images, under the stream's lock. It never touches the
open window or a window whose estimate job is queued or running; estimates, alert history and
jobs are kept. Objects go only when no image row references them any more (content addressing
shares one object between rows), through `remove_unreferenced`: move aside to `trash/`, re-check,
delete, so an upload that publishes the same object concurrently keeps it. `sweep_orphans` does
the same for objects no row references (older than the grace period) and finishes or deletes
interrupted uploads (`core.staging.sweep_incoming`). Orphans are rare (retention's removals cut
short by a killed process or an unreachable store after its commit), so one pass examines only
the next `MAX_SCAN_PER_PASS` image keys after a marker kept in the store: the bucket is not
listed whole every minute, and a restart or another API replica goes on where the last pass
stopped. Both work on either storage backend (only `ObjectStore` calls). `MaintenanceThread`
runs both in the API process, after a start-up sweep of `incoming/` in the same thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath

from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core import staging, storage
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.storage import ObjectStore
from flipwatch.service.core.tables import Batch, Image, Job, Stream, utcnow
from flipwatch.service.stream.service import lock_stream

log = logging.getLogger(__name__)

TRASH = "trash/"
IMAGES = "images/"
MAX_DELETE_PER_STREAM = 5000  # per pass: bounds one transaction; the next pass goes on
# Image keys one orphan-sweep pass examines (10 LIST calls on S3); a full cycle over N images
# takes N / 10 000 passes (1 M images: 100 passes, 100 min at the default 60 s interval).
MAX_SCAN_PER_PASS = 10_000
# The last image key the previous pass examined; absent when the next pass starts at the first.
SWEEP_MARKER = "maintenance/orphan-sweep-after"


@dataclass
class RetentionReport:
    images_deleted: int = 0
    batches_deleted: int = 0
    files_deleted: int = 0
    incoming_published: int = 0
    incoming_deleted: int = 0


def enforce_retention(
    session_factory: sessionmaker[Session], settings: Settings, *, now_offset_s: float = 0.0
) -> RetentionReport:
    """One pass over every stream with a policy; returns what was deleted.

    `now_offset_s` moves "now" forward (tests age images without waiting).
    """
    report = RetentionReport()
    with session_factory() as session:
        stream_ids = list(
            session.scalars(
                select(Stream.id).where(
                    or_(Stream.retain_images.is_not(None), Stream.retain_days.is_not(None))
                )
            )
        )
    for stream_id in stream_ids:
        with session_factory() as session:
            paths = _expire_stream(session, stream_id, report, now_offset_s)
            session.commit()
        report.files_deleted += remove_unreferenced(
            session_factory, storage.open_store(settings), paths
        )
    return report


def _expire_stream(
    session: Session, stream_id: uuid.UUID, report: RetentionReport, now_offset_s: float
) -> list[str]:
    """Delete this stream's expired image rows and emptied batches (flush only); their paths."""
    stream = lock_stream(session, stream_id)
    needed = select(Job.window_index).where(
        Job.stream_id == stream_id,
        Job.state.in_(("queued", "running")),
        Job.window_index.is_not(None),
    )
    expired = []
    if stream.retain_images is not None:
        expired.append(Image.position < stream.images_total - stream.retain_images)
    if stream.retain_days is not None:
        cutoff = utcnow() + timedelta(seconds=now_offset_s) - timedelta(days=stream.retain_days)
        expired.append(Image.created_at < cutoff)
    if not expired:
        return []
    rows = session.execute(
        select(Image.id, Image.path)
        .where(
            Image.stream_id == stream_id,
            Image.window_index < stream.current_window_index,  # never the open window
            Image.window_index.not_in(needed),
            or_(*expired),
        )
        .order_by(Image.position)
        .limit(MAX_DELETE_PER_STREAM)
    ).all()
    if rows:
        session.execute(delete(Image).where(Image.id.in_([r.id for r in rows])))
        report.images_deleted += len(rows)
    emptied = session.execute(
        delete(Batch)
        .where(Batch.stream_id == stream_id, ~exists().where(Image.batch_id == Batch.id))
        .execution_options(synchronize_session=False)
    )
    report.batches_deleted += emptied.rowcount or 0
    session.flush()
    return [r.path for r in rows]


def remove_unreferenced(
    session_factory: sessionmaker[Session], store: ObjectStore, keys: Iterable[str]
) -> int:
    """Delete the objects of `keys` that no image row references; returns how many went.

    Each object is moved into `trash/` first and the references checked again: an upload that
    committed a row for the same content meanwhile gets its object back (publishing replaces it
    anyway), so a committed row never loses its object.
    """
    candidates = sorted(set(keys))
    if not candidates:
        return 0
    moved: dict[str, str] = {}
    for key in _unreferenced(session_factory, candidates):
        aside = f"{TRASH}{uuid.uuid4().hex}{PurePosixPath(key).suffix}"
        try:
            store.move(key, aside)
        except FileNotFoundError:
            continue
        moved[key] = aside
    back = _referenced(session_factory, list(moved))
    for key, aside in moved.items():
        if key in back:
            store.move(aside, key)
        else:
            store.delete(aside)
    return len(moved) - len(back)


def _referenced(session_factory: sessionmaker[Session], paths: list[str]) -> set[str]:
    found: set[str] = set()
    with session_factory() as session:
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            found.update(session.scalars(select(Image.path).where(Image.path.in_(chunk))))
    return found


def _unreferenced(session_factory: sessionmaker[Session], paths: list[str]) -> list[str]:
    referenced = _referenced(session_factory, paths)
    return [p for p in paths if p not in referenced]


def sweep_orphans(
    session_factory: sessionmaker[Session],
    settings: Settings,
    *,
    grace_seconds: float,
    scan_limit: int = MAX_SCAN_PER_PASS,
) -> RetentionReport:
    """Finish or delete interrupted uploads, then delete the image objects no row references
    among the next `scan_limit` keys after the stored marker (wrapping to the first key once
    the listing ran out)."""
    store = storage.open_store(settings)
    incoming = staging.sweep_incoming(session_factory, store, grace_seconds=grace_seconds)
    report = RetentionReport(
        incoming_published=incoming.published, incoming_deleted=incoming.deleted
    )
    cutoff = time.time() - grace_seconds
    after = _sweep_marker(store)
    listed = list(itertools.islice(store.list(IMAGES, start_after=after), scan_limit))
    old = [info.key for info in listed if info.modified <= cutoff]
    report.files_deleted += remove_unreferenced(session_factory, store, old)
    full = bool(listed) and len(listed) == scan_limit  # else the listing ran out: start again
    _store_sweep_marker(store, after, listed[-1].key if full else "")
    # Left by a process killed mid-removal: nothing references them.
    for info in list(store.list(TRASH)):
        if info.modified <= cutoff:
            store.delete(info.key)
    return report


def _sweep_marker(store: ObjectStore) -> str:
    try:
        marker = store.get(SWEEP_MARKER).decode()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""
    return marker if marker.startswith(IMAGES) else ""  # anything else: start again


def _store_sweep_marker(store: ObjectStore, old: str, new: str) -> None:
    """Written only when it moves: a store with fewer images than one pass never gets one."""
    if new == old:
        return
    if new:
        store.put(SWEEP_MARKER, new.encode())
    else:
        store.delete(SWEEP_MARKER)


def disk_usage(settings: Settings) -> tuple[int, int]:
    """(objects, bytes) of stored images."""
    return storage.total_size(storage.open_store(settings).list(IMAGES))


def image_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Image)) or 0


class MaintenanceThread:
    """Sweeps interrupted uploads at start-up, then runs the orphan sweep and retention every
    `maintenance_interval_seconds` (API process), all in its own thread.

    The start-up sweep is the thread's first pass, at once: a hung or unreachable store costs
    it the store's attempts x timeouts, never the app's start-up or `/healthz`. A failed pass
    is logged with its reason and the next one (which sweeps `incoming/` too) retries; with an
    interval of 0 the start-up sweep is the only pass. Safe with several API processes: each
    stream is handled under its lock, and file removal re-checks references.
    `get_sessionmaker` returns None until the lifespan built one.
    """

    def __init__(
        self, get_sessionmaker: Callable[[], sessionmaker[Session] | None], settings: Settings
    ) -> None:
        self._get_sessionmaker = get_sessionmaker
        self._settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="flipwatch-maintenance", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to end and wait at most `timeout` (a pass stuck on a hung store is
        left to finish in its daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def sweep_interrupted_uploads(self) -> staging.SweepReport | None:
        """The start-up pass: what killed uploads left in `incoming/`, finished or deleted."""
        factory = self._get_sessionmaker()
        if factory is None:
            return None
        return staging.sweep_incoming(
            factory,
            storage.open_store(self._settings),
            grace_seconds=self._settings.orphan_grace_seconds,
        )

    def run_once(self) -> RetentionReport | None:
        factory = self._get_sessionmaker()
        if factory is None:
            return None
        grace = self._settings.orphan_grace_seconds
        report = sweep_orphans(factory, self._settings, grace_seconds=grace)
        kept = enforce_retention(factory, self._settings)
        report.images_deleted += kept.images_deleted
        report.batches_deleted += kept.batches_deleted
        report.files_deleted += kept.files_deleted
        if kept.images_deleted or report.files_deleted:
            log.info("maintenance: %s", report)
        return report

    def _run(self) -> None:
        interval = self._settings.maintenance_interval_seconds
        try:
            self.sweep_interrupted_uploads()
        except Exception as exc:  # noqa: BLE001 - the store or database may be down
            log.warning(
                "start-up sweep of interrupted uploads failed: %s; %s",
                _reason(exc),
                "the next maintenance pass retries it"
                if interval > 0
                else "not retried (maintenance_interval_seconds is 0)",
                exc_info=True,
            )
        if interval <= 0:
            return
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - the store or database may be down
                log.warning(
                    "maintenance pass failed: %s; the next pass retries it in %g s",
                    _reason(exc),
                    interval,
                    exc_info=True,
                )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
