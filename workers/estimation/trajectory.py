"""One adaptation trajectory: probe snapshots at checkpoints and the flip signals they give.

The estimator and the calibration both run exactly this function, so what calibration fits is
what an estimate measures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flipwatch.workers.estimation.adapt import RDumb, logits_of, prepare_adaptation_copy, set_mode
from flipwatch.workers.estimation.config import EstimateConfig, default_epsilon
from flipwatch.workers.estimation.embeddings import FeatureExtractor
from flipwatch.workers.estimation.flips import per_reference_probe, unweighted_flips, weighted_flips
from flipwatch.workers.estimation.images import normalize
from flipwatch.workers.estimation.spec import ModelSpec

Progress = Callable[[int, int], None]

# Signal names: `wf` is the reference definition (batch-statistics copy at step 0 against the
# same copy at step T); `wf_source` compares the source model in eval mode (its running
# statistics) with the adapted copy at step T. `uf*` are the unweighted counts of the same flips.
SIGNALS = ("wf", "wf_source", "uf", "uf_source")


@dataclass(frozen=True)
class Predictions:
    """Softmax outputs over the probe: probs (N, C) float32 CPU, optional features (N, D)."""

    probs: Tensor
    features: Tensor | None = None

    @property
    def labels(self) -> Tensor:
        return self.probs.argmax(1)

    @property
    def confidences(self) -> Tensor:
        return self.probs.max(1).values


@dataclass(frozen=True)
class Trajectory:
    """Everything one run measured; `signals[name][step]` are per-1000-probe-image values."""

    probe_size: int
    num_images: int
    steps: int
    source: Predictions
    adapted: dict[int, Predictions]
    signals: dict[str, dict[int, float]]
    used_fraction: float
    path: str = "plain"  # "plain", or the fast plan that ran it (e.g. "cpu channels_last fp32")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """No TF32, deterministic cuDNN (spec §10.7), restored afterwards."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = saved


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Tensor,
    spec: ModelSpec,
    *,
    device: torch.device,
    chunk_size: int,
    features: bool = False,
) -> Predictions:
    """Softmax over uint8 (N, C, H, W) images in consecutive chunks (BN statistics per chunk)."""
    probs: list[Tensor] = []
    extractor = FeatureExtractor(model) if features else None
    with extractor or contextlib.nullcontext():
        for start in range(0, len(images), chunk_size):
            x = normalize(images[start : start + chunk_size], spec.input, device=device)
            probs.append(F.softmax(logits_of(model(x)).float(), dim=1).cpu())
    feats = None if extractor is None or extractor.features is None else extractor.features
    return Predictions(torch.cat(probs), None if feats is None else feats.float().cpu())


def require_finite(probs: Tensor, what: str) -> None:
    """ValueError naming how many of `what` got NaN or inf outputs: broken weights or an
    overflow, which would otherwise surface deep inside a flip count or a distance."""
    bad = int((~torch.isfinite(probs)).any(dim=1).sum())
    if bad:
        raise ValueError(
            f"the model's outputs are NaN or inf on {bad} of {len(probs)} {what}: its weights "
            "or its arithmetic overflow there, and no estimate can be made from them"
        )


def batch_order(num_images: int, batch_size: int, steps: int, generator: torch.Generator) -> Tensor:
    """(steps, B) image indices: reshuffled full passes, trailing partial batch dropped (spec §4.1).

    Cycling over the buffered window is the reference's behaviour for short datasets (§10.3a);
    since each step draws its batch from this table, no pass length can skip the final snapshot
    (the divisor bug of §4.2).
    """
    per_pass = num_images // batch_size
    if per_pass == 0:
        raise ValueError(f"need at least {batch_size} images for one adaptation batch")
    passes = -(-steps // per_pass)
    order = [
        torch.randperm(num_images, generator=generator)[: per_pass * batch_size]
        for _ in range(passes)
    ]
    return torch.cat(order).view(-1, batch_size)[:steps]


def run_trajectory(
    model: nn.Module,
    images: Tensor,
    *,
    spec: ModelSpec,
    config: EstimateConfig,
    device: torch.device,
    progress: Progress | None = None,
    features: bool = True,
) -> Trajectory:
    """Adapt a copy of `model` on the window `images` (uint8 (N, C, H, W)) and record signals.

    The probe is a seeded uniform random subset of the window (the reference code's choice): a
    class-blocked window would otherwise give single-class BN chunks (offline-data.md).
    With `config.fast` (the default) the fast path runs it where the model allows
    (`fastpath.fast_path_blocker`); `fast=False` runs the plain reference loop below.
    """
    if config.fast:
        from flipwatch.workers.estimation import fastpath

        if fastpath.fast_path_blocker(model) is None:
            (trajectory,) = fastpath.run_trajectories(
                model,
                [images],
                spec=spec,
                config=config,
                device=device,
                progress=progress,
                features=features,
            )
            return trajectory
    if len(images) < config.min_images:
        raise ValueError(
            f"{len(images)} images are too few: an estimate needs at least {config.min_images} "
            f"(one adaptation batch is {config.batch_size})"
        )
    generator = torch.Generator().manual_seed(config.seed)
    probe_index = torch.randperm(len(images), generator=generator)[: config.probe_size]
    probe = images[probe_index]
    checkpoints = config.snapshot_steps()
    order = batch_order(len(images), config.batch_size, config.steps, generator)

    with deterministic_kernels():
        torch.manual_seed(config.seed)
        model = model.to(device).eval()
        source = predict(
            model, probe, spec, device=device, chunk_size=config.chunk_size, features=features
        )
        adapted_model = prepare_adaptation_copy(model)
        rdumb = RDumb(
            adapted_model,
            num_classes=spec.num_classes,
            lr=config.lr,
            momentum=config.momentum,
            entropy_factor=config.entropy_factor,
            epsilon=config.epsilon
            if config.epsilon is not None
            else default_epsilon(spec.num_classes),
            ema=config.ema,
            reset_interval=config.reset_interval,
        )
        adapted: dict[int, Predictions] = {}
        used: list[float] = []
        for k in range(config.steps + 1):
            if k in checkpoints:
                set_mode(adapted_model, train=False)
                adapted[k] = predict(
                    adapted_model,
                    probe,
                    spec,
                    device=device,
                    chunk_size=config.chunk_size,
                    features=features and k == config.steps,
                )
            if k == config.steps:
                break
            stats = rdumb.step(normalize(images[order[k]], spec.input, device=device))
            used.append(stats.selected / stats.batch)
            if progress is not None:
                progress(k + 1, config.steps)

    return Trajectory(
        probe_size=len(probe),
        num_images=len(images),
        steps=config.steps,
        source=source,
        adapted=adapted,
        signals=flip_signals(source, adapted),
        used_fraction=sum(used) / len(used) if used else 0.0,
    )


def flip_signals(
    source: Predictions, adapted: dict[int, Predictions]
) -> dict[str, dict[int, float]]:
    """Every signal at every checkpoint, scaled to a 1000-image probe (spec §10.1)."""
    start = adapted[0]
    n = source.probs.shape[0]
    signals: dict[str, dict[int, float]] = {name: {} for name in SIGNALS}
    for step, after in sorted(adapted.items()):
        signals["wf"][step] = per_reference_probe(
            weighted_flips(start.labels, after.labels, start.confidences), n
        )
        signals["wf_source"][step] = per_reference_probe(
            weighted_flips(source.labels, after.labels, source.confidences), n
        )
        signals["uf"][step] = per_reference_probe(unweighted_flips(start.labels, after.labels), n)
        signals["uf_source"][step] = per_reference_probe(
            unweighted_flips(source.labels, after.labels), n
        )
    del signals["wf"][0], signals["uf"][0]  # identically zero: step 0 against itself
    return signals
