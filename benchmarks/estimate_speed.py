"""Adaptation speed and memory: ResNet-50 (random init) and the demo model, synthetic images.

Prints one JSON object: per model and device, seconds per 100 RDumb steps (batch 64), seconds for
one 1000-image probe snapshot, a whole estimate's projected seconds, and peak memory. Each
measurement runs in a fresh subprocess so peak RSS belongs to that configuration alone.

    python benchmarks/estimate_speed.py [--steps 20] [--devices cpu,cuda] [--models resnet50,demo]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment, peak_rss_bytes  # noqa: E402
from flipwatch.workers.estimation.adapt import RDumb, prepare_adaptation_copy, set_mode  # noqa: E402
from flipwatch.workers.estimation.config import default_epsilon  # noqa: E402
from flipwatch.workers.estimation.images import normalize  # noqa: E402
from flipwatch.workers.estimation.spec import ModelSpec  # noqa: E402
from flipwatch.workers.estimation.trajectory import deterministic_kernels, predict  # noqa: E402

PROBE = 1000


def build(name: str) -> tuple[torch.nn.Module, ModelSpec]:
    if name == "resnet50":
        import torchvision

        torch.manual_seed(0)
        spec = ModelSpec(
            name="resnet50", format="torchvision", arch="resnet50", num_classes=1000, imagenet=True
        )
        return torchvision.models.resnet50(weights=None).eval(), spec
    if name == "demo":
        from flipwatch.workers.estimation.zoo import mnist_cnn

        torch.manual_seed(0)
        spec = ModelSpec(
            name="demo",
            format="entrypoint",
            entrypoint="mnist_cnn",
            num_classes=10,
            input={"color": "L", "size": [28, 28], "mean": [0.1307], "std": [0.3081]},
        )
        return mnist_cnn().eval(), spec
    raise SystemExit(f"unknown model {name!r}: use resnet50 or demo")


def measure(name: str, device_name: str, steps: int) -> dict[str, object]:
    device = torch.device(device_name)
    model, spec = build(name)
    model = model.to(device)
    c, (h, w) = spec.input.channels, spec.input.size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (PROBE, c, h, w), dtype=torch.uint8, generator=g)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with deterministic_kernels():
        adapted = prepare_adaptation_copy(model)
        rdumb = RDumb(
            adapted, num_classes=spec.num_classes, epsilon=default_epsilon(spec.num_classes)
        )
        batch = normalize(images[:64], spec.input, device=device)
        rdumb.step(batch)  # warm-up (allocator, cuDNN heuristics)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for k in range(steps):
            rdumb.step(normalize(images[(k * 64) % 896 :][:64], spec.input, device=device))
        sync()
        step_seconds = (time.perf_counter() - started) / steps
        set_mode(adapted, train=False)
        started = time.perf_counter()
        predict(adapted, images, spec, device=device, chunk_size=100)
        sync()
        snapshot_seconds = time.perf_counter() - started
    result: dict[str, object] = {
        "model": name,
        "device": device_name,
        "measured_steps": steps,
        "seconds_per_100_steps": round(100 * step_seconds, 3),
        "seconds_per_probe_snapshot": round(snapshot_seconds, 3),
        # An estimate at 250 steps with checkpoints 0, 50, 100, 250 takes 4 adapted snapshots and
        # one source pass over the probe.
        "projected_seconds_per_estimate_250_steps": round(
            250 * step_seconds + 5 * snapshot_seconds, 2
        ),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if device.type == "cuda":
        result["peak_cuda_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="steps timed per configuration")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--models", default="demo,resnet50")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "DEVICE"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.steps)))
        return
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    runs = []
    for name in args.models.split(","):
        for device in devices:
            steps = (
                args.steps if not (name == "resnet50" and device == "cpu") else min(args.steps, 5)
            )
            out = subprocess.run(
                [sys.executable, __file__, "--steps", str(steps), "--one", name, device]
                + (["--threads", str(args.threads)] if args.threads else []),
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    skipped = [] if torch.cuda.is_available() else ["cuda: no GPU on this machine"]
    print(
        json.dumps(
            {
                "benchmark": "estimate_speed",
                "probe_size": PROBE,
                "batch_size": 64,
                "runs": runs,
                "skipped": skipped,
                "environment": environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
