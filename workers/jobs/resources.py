"""Sharing one device between concurrent jobs, and what each job used of it.

A worker runs up to `jobs_per_device` jobs at once (Dramatiq threads, or the embedded worker's
threads). On a GPU a job first waits until the device has the memory its model needed last time
(`DeviceSlots`); every job reports its peak memory (`JobUsage`). torch is imported only when a job
runs on a device, never when this module is imported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

MEMORY_MARGIN = 1.1  # a job may need a little more than last time (allocator fragmentation)
POLL_S = 0.5
MAX_WAIT_S = 600.0  # past this a job runs anyway; an out-of-memory error retries it later


@dataclass
class JobUsage:
    """What one job used: its device, peak memory in bytes, and whether other jobs overlapped
    (then the peak is the device's during the job, an upper bound for this job alone)."""

    device: str
    peak_memory_bytes: int = 0
    shared: bool = False


class DeviceSlots:
    """Admission for concurrent jobs on one device, by memory.

    `need[key]` is the largest peak a job of that model key reached; a new job starts when no
    other job runs, or when the device's free memory covers that need (with a margin). CPU jobs
    are admitted at once (the thread count already bounds them).
    """

    def __init__(
        self,
        *,
        free_memory: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._starts: dict[str, int] = {}  # jobs started per device, to see overlaps
        self._need: dict[object, int] = {}
        self._free_memory = free_memory or _cuda_free_memory
        self._clock = clock
        self._sleep = sleep

    def running(self, device: str) -> int:
        with self._lock:
            return self._running.get(device, 0)

    @contextmanager
    def job(self, device: str, key: object) -> Iterator[JobUsage]:
        """Hold a slot on `device` for a job of model `key`; yields its usage record."""
        self._admit(device, key)
        usage = JobUsage(device=device)
        tracker = _PeakTracker(device)
        with self._lock:
            alone = self._running.get(device, 0) == 0
            self._running[device] = self._running.get(device, 0) + 1
            self._starts[device] = sequence = self._starts.get(device, 0) + 1
        tracker.start(reset=alone)
        try:
            yield usage
        finally:
            with self._lock:
                self._running[device] -= 1
                overlapped = self._running[device] > 0 or self._starts[device] != sequence
                usage.shared = not alone or overlapped
            usage.peak_memory_bytes = tracker.peak()
            if device.startswith("cuda") and not usage.shared:
                self._need[key] = max(self._need.get(key, 0), usage.peak_memory_bytes)

    def _admit(self, device: str, key: object) -> None:
        if not device.startswith("cuda"):
            return
        deadline = self._clock() + MAX_WAIT_S
        while True:
            with self._lock:
                busy = self._running.get(device, 0) > 0
                need = self._need.get(key, 0)
            if not busy or need * MEMORY_MARGIN <= self._free_memory(device):
                return
            if self._clock() >= deadline:
                log.warning("%s: waited %.0f s for memory; starting anyway", device, MAX_WAIT_S)
                return
            self._sleep(POLL_S)


class _PeakTracker:
    """Peak memory over a block: CUDA allocator statistics, or the process's resident peak
    (Linux VmHWM, reset through /proc/self/clear_refs) on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = 0

    def start(self, *, reset: bool) -> None:
        if self.device.startswith("cuda"):
            import torch

            if reset:
                torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        elif reset:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak(self) -> int:
        if self.device.startswith("cuda"):
            import torch

            return max(0, torch.cuda.max_memory_allocated(self.device) - self.baseline)
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def _cuda_free_memory(device: str) -> int:
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)
