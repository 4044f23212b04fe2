"""Decoding the next window while the current one adapts.

When an estimate job starts its estimator, the worker looks up the oldest other queued estimate
job, fetches that window's images from the object store and decodes them on a background thread
(on the CPU, which the GPU-bound adaptation leaves idle). When that job runs, in this worker, it
takes the decoded tensor instead of decoding again. One window is held at most; a miss (another
worker took the job, or the window changed) only costs the wasted fetch and decode.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from sqlalchemy import select

from flipwatch.service.core.storage import ObjectStore
from flipwatch.service.core.tables import Image, Job, Model
from flipwatch.workers.jobs.lifecycle import SessionFactory
from flipwatch.workers.objects import fetch_objects

if TYPE_CHECKING:
    from torch import Tensor

    from flipwatch.workers.estimation.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowKey:
    """What a decoded window depends on: the job, its files in order, and the model's input."""

    job_id: uuid.UUID
    paths: tuple[str, ...]
    spec_json: str


def decode_window(
    store: ObjectStore,
    items: list[tuple[str, str | None]],
    spec: ModelSpec,
    *,
    device: str = "cpu",
    threads: int = 16,
):
    """Stored images (storage key, original filename) -> uint8 (N, C, H, W) at the model's input
    size, in stream order. Only this window's objects are fetched (concurrently from a bucket);
    JPEGs decode in one batch (on the GPU when `device` is one), other formats through Pillow."""
    from flipwatch.workers.estimation.images import decode_images

    files = fetch_objects(store, [key for key, _ in items], threads=threads)
    names = [filename or PurePosixPath(key).name for key, filename in items]
    return decode_images(files, spec, names=names, device=device)


class WindowPrefetcher:
    """One decoded window ahead, on one background thread.

    `queues` limits it to estimate jobs on the queues this worker consumes (None: any), so a CPU
    host does not decode windows that a GPU host will run.
    """

    def __init__(self, queues: Collection[str] | None = None) -> None:
        self.queues = tuple(queues) if queues is not None else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flipwatch-prefetch")
        self._lock = threading.Lock()
        self._slot: tuple[WindowKey, Future] | None = None
        self.hits = 0
        self.misses = 0

    def take(self, key: WindowKey) -> Tensor | None:
        """The prefetched window for `key` (waiting for its decode), or None."""
        with self._lock:
            slot = self._slot
            if slot is None or slot[0] != key:
                self.misses += 1
                return None
            self._slot = None
        try:
            images = slot[1].result()
        except Exception:  # noqa: BLE001 - the job decodes again and reports the real error
            self.misses += 1
            return None
        self.hits += 1
        return images

    def prefetch_next(
        self,
        session_factory: SessionFactory,
        current: uuid.UUID,
        store: ObjectStore,
        *,
        threads: int = 16,
    ) -> None:
        """Start fetching and decoding the oldest queued estimate job's window other than
        `current`."""
        try:
            found = _next_window(session_factory, current, self.queues)
        except Exception:  # noqa: BLE001 - advisory: the job itself will decode
            log.warning("prefetch lookup failed", exc_info=True)
            return
        if found is None:
            return
        key, paths, spec = found
        with self._lock:
            if self._slot is not None and self._slot[0] == key:
                return
            future = self._executor.submit(decode_window, store, paths, spec, threads=threads)
            self._slot = (key, future)
        log.debug("prefetching window of job %s (%d files)", key.job_id, len(paths))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def window_key(
    job_id: uuid.UUID, paths: list[tuple[str, str | None]], spec: ModelSpec
) -> WindowKey:
    """The prefetch slot's key for a job's window."""
    return WindowKey(job_id, tuple(p for p, _ in paths), spec.model_dump_json())


def _next_window(
    session_factory: SessionFactory, current: uuid.UUID, queues: tuple[str, ...] | None
) -> tuple[WindowKey, list[tuple[str, str | None]], ModelSpec] | None:
    from flipwatch.workers.estimation.spec import ModelSpec

    with session_factory() as session:
        query = select(Job).where(Job.kind == "estimate", Job.state == "queued", Job.id != current)
        if queues is not None:
            query = query.where(Job.queue.in_(queues))
        job = session.execute(query.order_by(Job.created_at).limit(1)).scalar_one_or_none()
        if job is None or job.stream_id is None or job.window_index is None:
            return None
        model = session.get(Model, job.model_id)
        if model is None:
            return None
        rows = session.execute(
            select(Image.path, Image.filename)
            .where(Image.stream_id == job.stream_id, Image.window_index == job.window_index)
            .order_by(Image.position)
        ).all()
        if not rows:
            return None
        spec = ModelSpec.model_validate(model.spec)
        paths = [(r.path, r.filename) for r in rows]
        return window_key(job.id, paths, spec), paths, spec
