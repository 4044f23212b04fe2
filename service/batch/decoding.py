"""Full decodes of uploaded images in a process pool (FLIPWATCH_VALIDATION_PROCESSES > 0).

A decode is the expensive part of validating a batch (`check_image`); in the request's thread it
competes with the event loop for the GIL around Pillow's Python code. The pool moves it into
separate processes (spawned, not forked: the API process runs threads). Whether that pays depends
on the cores the API has to itself: `benchmarks/ingest_load.py --validation both` measures it.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger(__name__)


def decode_reason(data: bytes) -> str | None:
    """Why `data` does not decode fully, or None; runs in a pool process."""
    from flipwatch.service.batch.service import decode_fully

    try:
        decode_fully(data)
    except ValueError as exc:
        return str(exc)
    return None


class DecodePool:
    """`processes` spawned workers that decode images; `decode_all` keeps the input order.

    A worker that dies (killed by the OOM killer, say) breaks the pool: the batch is then decoded
    in the calling thread and a new pool replaces the broken one, so a request never fails for it.
    """

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._lock = threading.Lock()
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"))

    def decode_all(self, files: Sequence[bytes]) -> list[str | None]:
        executor = self._executor
        try:
            return list(executor.map(decode_reason, files, chunksize=4))
        except BrokenProcessPool:
            log.warning("image decode pool broke; decoding this batch in the request's thread")
            with self._lock:
                if self._executor is executor:
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = self._new_executor()
            return [decode_reason(data) for data in files]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
