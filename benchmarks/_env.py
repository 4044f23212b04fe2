"""Hardware and version facts every benchmark prints beside its figures.

torch is imported only by the functions that need it, so torch-free benchmarks (the API's
`metrics_scrape.py`) share `cpu_name` without paying for it."""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def environment(device: torch.device | None = None) -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        # the vector unit torch's kernels use ("AVX2", "AVX512"): two "AMD EPYC" VMs measured
        # here differ 3-4x in torch speed by it, and only AVX-512 ones have native bf16
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device or 0)
    return info


def peak_rss_bytes() -> int:
    """The process's peak resident memory (ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's VmHWM (clear_refs 5)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """Peak since the last `reset_peak_memory`: CUDA allocated bytes, or the process's VmHWM
    (resident set high-water mark; ru_maxrss where /proc is missing, which never resets)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()
