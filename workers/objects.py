"""What a worker reads from the object store: a window's images, model weights, reference sets.

The estimator never sees the store: jobs hand it bytes and local paths. On the local backend the
store's own files are read in place (no copy, as before the store existed). On S3:

- a window's images are fetched concurrently (`storage_threads`) into memory, only that window;
- weights are cached on local disk by digest (`<cache>/models/<sha256>.pt`), verified against the
  digest the API recorded, and evicted least-recently-used past `storage_cache_bytes`;
- a reference set is downloaded to a temporary folder for the calibrate job, then removed.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.storage import ObjectStore

log = logging.getLogger(__name__)


def fetch_objects(store: ObjectStore, keys: list[str], *, threads: int = 16) -> list[bytes]:
    """The bytes of `keys`, in order; concurrent reads when the store is remote."""
    if not keys:
        return []
    if store.local_path(keys[0]) is not None or threads <= 1 or len(keys) == 1:
        return [store.get(key) for key in keys]
    with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
        return list(pool.map(store.get, keys))


class WeightsMismatch(OSError):
    """The fetched weights do not hash to the recorded digest (a damaged or replaced object)."""


class WeightsCache:
    """Model weights on local disk, by digest, bounded in bytes (least recently used goes).

    Safe for threads of one process and for processes sharing the folder: files appear by rename
    only, and a file evicted under a reader's feet makes that job retry (FileNotFoundError).
    """

    def __init__(self, store: ObjectStore, folder: Path, *, max_bytes: int) -> None:
        self.store = store
        self.folder = Path(folder) / "models"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def path(self, key: str, sha256: str) -> Path:
        """A local file holding the weights of `key`, whose SHA-256 is `sha256`."""
        own = self.store.local_path(key)
        if own is not None:
            if not own.is_file():
                raise FileNotFoundError(f"weights {key} are not in {self.store!r}")
            return own
        target = self.folder / f"{sha256}.pt"
        with self._lock:
            if target.is_file():
                os.utime(target)  # most recently used
                self.hits += 1
                return target
            self.misses += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.folder, prefix=".fetch-", suffix=".tmp")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                self.store.download(key, tmp)
                found = storage.sha256_file(tmp)
                if found != sha256:
                    raise WeightsMismatch(
                        f"weights {key} hash to {found}, not the registered {sha256}; "
                        "register the model again"
                    )
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("weights cache: fetched %s (%d bytes)", key, target.stat().st_size)
            self._evict(keep=target)
            return target

    def _evict(self, *, keep: Path) -> None:
        files = []
        for path in self.folder.glob("*.pt"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("weights cache: evicted %s", path.name)


@contextmanager
def reference_folder(store: ObjectStore, key: str, scratch: Path) -> Iterator[Path]:
    """A local folder holding the reference set stored under `key` (its ImageFolder root): the
    store's own folder on the local backend, else a temporary download removed afterwards."""
    own = store.local_path(key)
    if own is not None:
        if not own.is_dir():
            raise FileNotFoundError(f"reference set {key} is not in {store!r}")
        yield own
        return
    prefix = key.rstrip("/") + "/"
    infos = list(store.list(prefix))
    if not infos:
        raise FileNotFoundError(f"reference set {key} is not in {store!r}")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=scratch, prefix="reference-"))
    try:
        targets = [folder / info.key[len(prefix) :] for info in infos]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(store.download, [i.key for i in infos], targets))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def _weights_cache(store: ObjectStore, folder: Path, max_bytes: int) -> WeightsCache:
    return WeightsCache(store, folder, max_bytes=max_bytes)


def weights_cache(settings: Settings) -> WeightsCache:
    """This process's weights cache for `settings` (one per store and folder)."""
    return _weights_cache(
        storage.open_store(settings),
        settings.effective_cache_dir.resolve(),
        settings.storage_cache_bytes,
    )
