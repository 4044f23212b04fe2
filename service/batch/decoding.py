"""Full decodes of uploaded images in a process pool (FLIPWATCH_VALIDATION_PROCESSES > 0).

A decode is the expensive part of validating a batch (`check_image`); in the request's thread it
competes with the event loop for the GIL around Pillow's Python code. The pool moves it into
separate processes (spawned, not forked: the API process runs threads). Whether that pays depends
on the cores the API has to itself: `benchmarks/ingest_load.py --validation both` measures it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor


def decode_reason(data: bytes) -> str | None:
    """Why `data` does not decode fully, or None; runs in a pool process."""
    from flipwatch.service.batch.service import decode_fully

    try:
        decode_fully(data)
    except ValueError as exc:
        return str(exc)
    return None


class DecodePool:
    """`processes` spawned workers that decode images; `decode_all` keeps the input order."""

    def __init__(self, processes: int) -> None:
        self._executor = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn")
        )

    def decode_all(self, files: Sequence[bytes]) -> list[str | None]:
        return list(self._executor.map(decode_reason, files, chunksize=4))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
