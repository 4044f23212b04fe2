"""The estimator's fast path: V trajectories of one model as one computation, without host syncs.

The plain path (`trajectory.run_trajectory` with `EstimateConfig(fast=False)`, `adapt.RDumb`)
follows the reference step by step. This module computes the same RDumb algorithm (spec §3)
differently:

* Every BatchNorm2d of an eager model is replaced by `GroupedBatchNorm2d`, whose affine values
  are views of one flat leaf tensor `(V, P)`: V trajectories (calibration variants, or V = 1 for an
  estimate) run as one batch of V·B images, each group normalised with its own batch statistics
  and its own affine values. Convolutions and the head see one large batch.
* The entropy filter, the redundancy filter, the EMA, the SGD-with-momentum update and the flip
  bookkeeping are masked tensor arithmetic on the device (no `nonzero`, no `.item()`), so a CUDA
  step never waits for the host. A group whose filters keep nothing leaves its parameters,
  momentum and EMA exactly as the reference does (it skips `optimizer.step`).
* Per device a `FastPlan` chooses memory format, bf16 autocast (BN statistics, softmax, entropy
  and the loss stay fp32), threads and `torch.compile`. The plan is a fixed rule per device, never
  a timing (CPU: channels_last, with bf16 autocast where the processor has native bf16; CUDA:
  bf16 + channels_last + compile with an eager fallback): a timed choice would flip with the
  machine's load, and with it the rounding, so two workers could give one window two estimates.
  channels_last is fp32's faster format too: on an AVX2-only CPU the demo CNN's step ran 1.37×
  the plain loop with it and 0.99× contiguous (benchmarks/results/estimate_speed_demo_cpu_avx2*).
  Its results, like bf16's, depend on the thread count in the last bits, so workers that must
  agree to the bit run the same number of threads.
  `choose_plan(tune=True)` times the CPU candidates on the model itself, for benchmarks.
* Probe snapshots run in `torch.inference_mode`; the source model's probe predictions (eval mode,
  running statistics, so independent of the chunking) run once, in large batches, in fp32.

Results agree with the plain path up to floating-point rounding in fp32 (bf16 changes which
borderline samples pass the entropy filter); tests check both.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flipwatch.workers.estimation.adapt import is_scripted, logits_of
from flipwatch.workers.estimation.config import (
    EstimateConfig,
    default_epsilon,
    entropy_threshold,
)
from flipwatch.workers.estimation.embeddings import FeatureExtractor
from flipwatch.workers.estimation.spec import InputSpec, ModelSpec

if TYPE_CHECKING:
    from flipwatch.workers.estimation.trajectory import Trajectory

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

SOURCE_CHUNK = {"cpu": 500, "cuda": 1000}
# A window up to this size is copied to the GPU once; larger ones go batch by batch, pinned.
UPLOAD_BYTES = 4 << 30


@dataclass(frozen=True)
class FastPlan:
    """How the fast path runs on one device: a fixed rule per device (`choose_plan`)."""

    device: torch.device
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    threads: int | None = None  # CPU: torch threads during the run; None leaves them alone

    def describe(self) -> str:
        parts = [self.device.type, "channels_last" if self.channels_last else "contiguous"]
        parts.append("bf16" if self.bf16 else "fp32")
        if self.compile:
            parts.append("compiled")
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return " ".join(parts)


def fast_path_blocker(model: nn.Module) -> str | None:
    """Why the fast path cannot run this model (None when it can).

    TorchScript modules cannot have their BN layers swapped; BatchNorm2d subclasses may do more
    than normalise in `forward` (e.g. a fused activation), so replacing them could change the
    model. Both run the plain path.
    """
    if is_scripted(model):
        return "TorchScript model: BN layers cannot be regrouped"
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and type(module) is not nn.BatchNorm2d:
            return f"{type(module).__name__} subclasses BatchNorm2d; only plain BN is regrouped"
        if isinstance(module, nn.BatchNorm2d) and (module.weight is None or module.bias is None):
            return "a BatchNorm2d layer has no affine weight/bias (affine=False)"
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return "the model has no BatchNorm2d layer"
    return None


# --- grouped BatchNorm over a flat parameter -------------------------------------------------


class FlatAffine:
    """The trainable state of V trajectories: all BN weights and biases, one row per group.

    `flat` (V, P) is the only leaf that requires grad; each `GroupedBatchNorm2d` reads a slice of
    it, so the optimizer update is a handful of whole-tensor operations whatever the depth.
    """

    def __init__(self, theta0: Tensor, groups: int) -> None:
        self.theta0 = theta0  # (P,)
        self.flat = theta0.detach().repeat(groups, 1).requires_grad_(True)

    @property
    def groups(self) -> int:
        return self.flat.shape[0]


class GroupedBatchNorm2d(nn.Module):
    """BatchNorm2d on batch statistics for V groups stacked along the batch dimension.

    Input (V·B, C, H, W), groups contiguous (group v is rows v·B … v·B + B − 1). Group v is
    normalised with its own mean and biased variance and scaled by row v of the flat affine
    tensor: exactly what V separate BN layers with deleted running statistics compute.
    """

    def __init__(self, bn: nn.BatchNorm2d, state: FlatAffine, offset: int) -> None:
        super().__init__()
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.offset = offset
        self._state = [state]  # a list, so nn.Module does not try to register or copy it

    def forward(self, x: Tensor) -> Tensor:
        flat = self._state[0].flat
        c, o = self.num_features, self.offset
        groups = flat.shape[0]
        if groups == 1:
            return F.batch_norm(
                x, None, None, flat[0, o : o + c], flat[0, o + c : o + 2 * c], True, 0.0, self.eps
            )
        if x.shape[0] % groups:
            raise ValueError(f"batch of {x.shape[0]} does not split into {groups} groups")
        parts = x.chunk(groups)
        return torch.cat(
            [
                F.batch_norm(
                    part,
                    None,
                    None,
                    flat[v, o : o + c],
                    flat[v, o + c : o + 2 * c],
                    True,
                    0.0,
                    self.eps,
                )
                for v, part in enumerate(parts)
            ]
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, groups={self._state[0].groups}"


class _GradChannelsLast(torch.autograd.Function):
    """Identity forward; backward hands the gradient on in channels_last.

    Average-pool backward returns contiguous (NCHW) gradients even for channels_last inputs, and
    every ReLU/BN backward below it then runs on mixed layouts, a slow path (measured 25× slower
    for a ReLU backward on the demo model's 64×16×28×28 maps than with matching layouts).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def _channels_last_grad_hook(module: nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], Tensor) and args[0].dim() == 4 and args[0].requires_grad:
        return (_GradChannelsLast.apply(args[0]), *args[1:])
    return None


def keep_channels_last_gradients(model: nn.Module) -> None:
    """Pooling layers pass channels_last gradients on (see `_GradChannelsLast`)."""
    for module in model.modules():
        if isinstance(module, nn.AdaptiveAvgPool2d | nn.AvgPool2d):
            module.register_forward_pre_hook(_channels_last_grad_hook)


def grouped_copy(model: nn.Module, groups: int) -> tuple[nn.Module, FlatAffine]:
    """A deep copy of `model` whose BN layers are grouped over one flat affine state.

    The flat layout follows `model.modules()` order, weight then bias per layer: the order of
    `adapt.bn_affine_parameters`, so flat rows compare directly with the plain path's parameters.
    """
    adapted = copy.deepcopy(model)
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    layers = [m for m in adapted.modules() if type(m) is nn.BatchNorm2d]
    offsets: list[int] = []
    position = 0
    for bn in layers:
        offsets.append(position)
        position += 2 * bn.num_features
    theta0 = torch.cat([t.detach().flatten() for bn in layers for t in (bn.weight, bn.bias)])
    state = FlatAffine(theta0.clone(), groups)
    replacement = {
        id(bn): GroupedBatchNorm2d(bn, state, offset)
        for bn, offset in zip(layers, offsets, strict=True)
    }
    for parent in list(adapted.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in replacement:
                setattr(parent, name, replacement[id(child)])
    adapted.train(True)
    return adapted, state


# --- the batched RDumb step ------------------------------------------------------------------


class GroupedRDumb:
    """RDumb (spec §3) for V trajectories at once, as masked arithmetic on the device.

    Equivalent to V independent `adapt.RDumb` instances stepping on V batches of the same size.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: int,
        *,
        plan: FastPlan,
        num_classes: int,
        config: EstimateConfig,
    ) -> None:
        self.plan = plan
        self.device = plan.device
        model, self.state = grouped_copy(model, groups)
        self.model = model.to(self.device)
        self.state.flat = self.state.flat.detach().to(self.device).requires_grad_(True)
        self.state.theta0 = self.state.theta0.to(self.device)
        if plan.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            keep_channels_last_gradients(self.model)
        self.groups = groups
        self.lr = config.lr
        self.momentum = config.momentum
        self.e0 = entropy_threshold(num_classes, config.entropy_factor)
        self.epsilon = (
            config.epsilon if config.epsilon is not None else default_epsilon(num_classes)
        )
        self.ema = config.ema
        self.reset_interval = config.reset_interval
        self.num_classes = num_classes
        self._forward: Callable[[Tensor], Tensor] = self.model
        self._compiled = False
        if plan.compile:
            self._forward = torch.compile(self.model, dynamic=False)
            self._compiled = True
        self.start()

    def start(self) -> None:
        """A fresh trajectory: step counter and selection totals at zero, state at θ0."""
        self.k = 0
        self.selected_total = torch.zeros(self.groups, device=self.device)
        self.reset()

    def reset(self) -> None:
        """θ0 into every group, momentum and EMA cleared (all on the device)."""
        with torch.no_grad():
            self.state.flat.copy_(self.state.theta0.expand_as(self.state.flat))
        p = self.state.flat.shape[1]
        self.buf = torch.zeros(self.groups, p, device=self.device)
        self.mean_probs = torch.zeros(self.groups, self.num_classes, device=self.device)
        self.has_mean = torch.zeros(self.groups, dtype=torch.bool, device=self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.plan.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _logits(self, x: Tensor) -> Tensor:
        with self._autocast():
            if not self._compiled:
                return logits_of(self.model(x))
            try:
                return logits_of(self._forward(x))
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
                log.warning("torch.compile failed (%s); the step runs eagerly", exc)
                self._forward, self._compiled = self.model, False
                return logits_of(self.model(x))

    def step(self, x: Tensor) -> None:
        """One RDumb step for every group; x is (V·B, C, H, W), normalised, group-major."""
        if self.k % self.reset_interval == 0:
            self.reset()
        self.model.train(True)
        v = self.groups
        b = x.shape[0] // v
        try:
            loss, selected, probs = self._loss(x, v, b)
            if self.device.type == "cpu" and not bool(selected.any()):
                # Nothing selected anywhere: the reference skips the update, and on CPU asking
                # costs nothing, so skip the backward too. (CUDA: masked, no sync.)
                self.k += 1
                return
            (grad,) = torch.autograd.grad(loss, self.state.flat)
        except Exception as exc:  # noqa: BLE001 - a compiled backward can fail late, too
            if not self._compiled:
                raise
            log.warning("compiled step failed (%s); the step runs eagerly", exc)
            self._forward, self._compiled = self.model, False
            loss, selected, probs = self._loss(x, v, b)
            (grad,) = torch.autograd.grad(loss, self.state.flat)
        self._update(grad.float(), selected, probs)
        self.k += 1

    def _loss(self, x: Tensor, v: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
        logits = self._logits(x).float().view(v, b, -1)
        log_p = F.log_softmax(logits, dim=2)
        p = log_p.exp()
        h = -(p * log_p).sum(2)  # (V, B) entropies in nats
        probs = p.detach()
        reliable = h.detach() < self.e0
        cos = F.cosine_similarity(self.mean_probs.unsqueeze(1), probs, dim=2)
        redundancy_ok = (cos.abs() < self.epsilon) | ~self.has_mean.unsqueeze(1)
        selected = (reliable & redundancy_ok).float()
        count = selected.sum(1)
        weights = torch.exp(self.e0 - h.detach())
        loss = ((weights * h * selected).sum(1) / count.clamp(min=1.0)).sum()
        return loss, selected, probs

    @torch.no_grad()
    def _update(self, grad: Tensor, selected: Tensor, probs: Tensor) -> None:
        count = selected.sum(1)
        stepped = (count > 0).unsqueeze(1)  # (V, 1)
        # SGD with momentum, PyTorch's rule (buffer = gradient on the first step, since it
        # starts at zero), applied only to groups that selected something.
        new_buf = torch.where(stepped, self.buf * self.momentum + grad, self.buf)
        self.buf = new_buf
        flat = self.state.flat
        flat.copy_(torch.where(stepped, flat - self.lr * new_buf, flat))
        mean_selected = (probs * selected.unsqueeze(2)).sum(1) / count.clamp(min=1.0).unsqueeze(1)
        blended = torch.where(
            self.has_mean.unsqueeze(1),
            self.ema * self.mean_probs + (1 - self.ema) * mean_selected,
            mean_selected,
        )
        self.mean_probs = torch.where(stepped, blended, self.mean_probs)
        self.has_mean = self.has_mean | stepped.squeeze(1)
        self.selected_total += count

    @torch.inference_mode()
    def snapshot(
        self, probes: Tensor, spec: InputSpec, *, chunk_size: int, features: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Softmax of every group's probe (V, N, C, H, W) uint8 → (V, N, K) float32 on device.

        Chunks of `chunk_size` per group (BN statistics per chunk and group, spec §4.3), all
        groups' chunks in one forward. With `features` (V = 1 only), the penultimate features.
        """
        self.model.train(False)
        v, n = probes.shape[:2]
        out: list[Tensor] = []
        extractor = FeatureExtractor(self.model) if features else None
        with extractor or contextlib.nullcontext(), self._autocast():
            for start in range(0, n, chunk_size):
                chunk = probes[:, start : start + chunk_size]
                x = self.normalize(chunk.flatten(0, 1), spec)
                logits = logits_of(self.model(x)).float()
                out.append(F.softmax(logits, dim=1).view(v, chunk.shape[1], -1))
        self.model.train(True)
        feats = None if extractor is None else extractor.features
        return torch.cat(out, dim=1), None if feats is None else feats.float()

    def normalize(self, images: Tensor, spec: InputSpec) -> Tensor:
        return normalize_fast(images, spec, self.device, channels_last=self.plan.channels_last)


def normalize_fast(
    images: Tensor, spec: InputSpec, device: torch.device, *, channels_last: bool
) -> Tensor:
    """uint8 (N, C, H, W) → float32 (x/255 − mean)/std on `device`, as one multiply-add."""
    scale, shift = _affine_constants(tuple(spec.mean), tuple(spec.std), str(device))
    x = images.to(device, non_blocking=True)
    x = torch.addcmul(shift, x.float(), scale) if x.dtype == torch.uint8 else (x - shift) * scale
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@lru_cache(maxsize=32)
def _affine_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: str
) -> tuple[Tensor, Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1.0 / (255.0 * s)).to(device), (-m / s).to(device)


# --- source predictions ----------------------------------------------------------------------


class SourceModel:
    """The unadapted model in eval mode (running statistics) on the plan's device, fp32.

    Eval-mode BN makes every prediction independent of its batch, so any chunking gives the same
    numbers up to rounding: large chunks, inference mode. fp32 because these predictions are the
    reference the flips are counted against (and the ground truth in calibration).
    """

    def __init__(self, model: nn.Module, plan: FastPlan) -> None:
        self.plan = plan
        self.model = copy.deepcopy(model).to(plan.device).eval()
        if plan.channels_last and not is_scripted(self.model):
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(
        self, images: Tensor, spec: InputSpec, *, features: bool = False, chunk: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """uint8 (N, C, H, W) → softmax (N, K) float32 on device, optional features."""
        chunk = chunk or SOURCE_CHUNK.get(self.plan.device.type, 500)
        extractor = FeatureExtractor(self.model) if features else None
        out: list[Tensor] = []
        with extractor or contextlib.nullcontext():
            for start in range(0, len(images), chunk):
                x = normalize_fast(
                    images[start : start + chunk],
                    spec,
                    self.plan.device,
                    channels_last=self.plan.channels_last,
                )
                out.append(F.softmax(logits_of(self.model(x)).float(), dim=1))
        feats = None if extractor is None else extractor.features
        return torch.cat(out), None if feats is None else feats.float()


# --- plan choice -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX): without it bf16 autocast is emulated and
    measured ~30× slower than fp32 for a ResNet-50 step on an AVX2 machine."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            native = native and bool(check())
        except RuntimeError:
            native = False
    return native


def cuda_plan(device: torch.device, *, compile: bool = True) -> FastPlan:
    """bf16 where the GPU has it, channels_last, compiled step (eager fallback)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    return FastPlan(
        device=device,
        channels_last=True,
        bf16=torch.cuda.is_bf16_supported(),
        compile=compile,
    )


_plan_cache: dict[tuple, FastPlan] = {}
_plan_lock = threading.Lock()


def choose_plan(
    model: nn.Module,
    spec: ModelSpec,
    device: torch.device,
    *,
    batch_size: int,
    tune: bool = False,
) -> FastPlan:
    """The fast plan for this model on this device.

    CUDA: fixed (`cuda_plan`). CPU: channels_last, with bf16 autocast where the processor has
    native bf16; the same on every run, so estimates are reproducible for a given thread count.
    On both, a model whose forward fails on channels_last input (`runs_channels_last`) runs
    contiguous.
    With `tune` each candidate
    (memory format × native bf16 × threads) runs a few forward+backward passes of the model on
    random input and the fastest wins (benchmarks). Plans are cached per model shape, input size,
    batch size and thread count.
    """
    threads = torch.get_num_threads()
    key = (
        str(device),
        type(model).__qualname__,
        tuple(p.shape for p in model.parameters()),
        spec.input.channels,
        tuple(spec.input.size),
        batch_size,
        threads,
        tune,
    )
    with _plan_lock:
        cached = _plan_cache.get(key)
    if cached is not None:
        return cached
    layout_ok = runs_channels_last(model, spec.input)
    if not layout_ok:
        log.info("fast path: %s fails on channels_last input; it runs contiguous", spec.name)
    candidates = [p for p in cpu_candidates(threads) if layout_ok or not p.channels_last]
    if device.type == "cuda":
        plan = replace(cuda_plan(device), channels_last=layout_ok)
    elif not tune or len(candidates) == 1:
        plan = FastPlan(
            device=torch.device("cpu"), channels_last=layout_ok, bf16=cpu_supports_bf16()
        )
    else:
        timings = time_candidates(model, spec, candidates, batch_size=batch_size)
        plan = min(timings, key=timings.__getitem__)
        log.info(
            "fast path on CPU: %s (%s)",
            plan.describe(),
            ", ".join(f"{p.describe()} {1e3 * t:.1f} ms" for p, t in timings.items()),
        )
    with _plan_lock:
        _plan_cache[key] = plan
    return plan


def runs_channels_last(model: nn.Module, spec: InputSpec) -> bool:
    """Whether the model's forward accepts channels_last input.

    A forward that flattens convolution features with `.view` (not `flatten` or `reshape`), as
    many hand-written CNNs do, fails on that layout; such a model runs contiguous instead.
    """
    probe = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    height, width = spec.size
    x = torch.rand(4, spec.channels, height, width, generator=torch.Generator().manual_seed(0))
    x = x.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            probe(x)
            probe.train()(x)  # train mode too: auxiliary heads run only there
    except Exception:  # noqa: BLE001 - whatever a layout breaks; contiguous is the safe answer
        return False
    return True


def cpu_candidates(threads: int) -> list[FastPlan]:
    cpu = torch.device("cpu")
    plans = [FastPlan(cpu, channels_last=cl) for cl in (True, False)]
    if cpu_supports_bf16():
        plans.append(FastPlan(cpu, channels_last=True, bf16=True))
    if threads > 1:
        plans += [replace(p, threads=1) for p in plans]
    return plans


def time_candidates(
    model: nn.Module,
    spec: ModelSpec,
    candidates: Sequence[FastPlan],
    *,
    batch_size: int,
    repeats: int = 2,
) -> dict[FastPlan, float]:
    """Seconds per sample of one forward+backward (every sample selected) per candidate.

    The timing batch is the step's batch for small models and shrinks for large ones, so that
    tuning a ResNet-50 on two cores costs seconds, not minutes.
    """
    c, (h, w) = spec.input.channels, spec.input.size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, c, h, w), dtype=torch.uint8, generator=generator)
    config = EstimateConfig()
    probe_batch = min(batch_size, 4)
    first = candidates[0]
    with using_threads(first.threads):
        rdumb = GroupedRDumb(model, 1, plan=first, num_classes=spec.num_classes, config=config)
        seconds = _time_backward(rdumb, images[:probe_batch], spec.input, repeats=1)
    per_sample = seconds / probe_batch
    tune_batch = int(min(batch_size, max(probe_batch, 0.25 / max(per_sample, 1e-6))))
    timings: dict[FastPlan, float] = {}
    for plan in candidates:
        with using_threads(plan.threads):
            rdumb = GroupedRDumb(model, 1, plan=plan, num_classes=spec.num_classes, config=config)
            timings[plan] = (
                _time_backward(rdumb, images[:tune_batch], spec.input, repeats=repeats) / tune_batch
            )
    return timings


def _time_backward(rdumb: GroupedRDumb, images: Tensor, spec: InputSpec, *, repeats: int) -> float:
    x = rdumb.normalize(images, spec)

    def once() -> None:
        with rdumb._autocast():
            logits = logits_of(rdumb.model(x)).float()
        torch.autograd.grad(logits.logsumexp(1).mean(), rdumb.state.flat)

    once()  # warm-up: allocator, oneDNN primitive cache
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - started)
    return best


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set for a block and restored afterwards."""
    if threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def fast_kernels(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on (fastest algorithms), TF32 off (fp32 stays fp32); restored after."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = saved


# --- reuse ----------------------------------------------------------------------------------


class _Pool:
    """Idle adaptation copies and source copies per source model, for reuse across runs.

    Reuse matters on CUDA, where a compiled step costs a compilation per new module. Keyed on
    the source model object (weakly) and its parameters' version counters, so an in-place edit
    of the source weights never meets a stale copy. A copy is checked out by one run at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list]] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def _version(model: nn.Module) -> tuple[int, ...]:
        return tuple(t._version for t in (*model.parameters(), *model.buffers()))

    @contextlib.contextmanager
    def _checkout(self, model: nn.Module, key: tuple, build: Callable[[], object]) -> Iterator:
        key = (*key, self._version(model))
        with self._lock:
            idle = self._idle.setdefault(model, {})
            for stale in [k for k in idle if k[-1] != key[-1]]:
                del idle[stale]
            items = idle.setdefault(key, [])
            item = items.pop() if items else None
        if item is None:
            item = build()
        try:
            yield item
        except BaseException:
            raise  # a run that failed midway may leave the copy in any state: drop it
        else:
            with self._lock:
                self._idle.setdefault(model, {}).setdefault(key, []).append(item)

    def source(self, model: nn.Module, plan: FastPlan) -> contextlib.AbstractContextManager:
        return self._checkout(model, ("source", plan), lambda: SourceModel(model, plan))

    def rdumb(
        self,
        model: nn.Module,
        groups: int,
        plan: FastPlan,
        num_classes: int,
        config: EstimateConfig,
    ) -> contextlib.AbstractContextManager:
        settings = (
            config.lr,
            config.momentum,
            config.entropy_factor,
            config.epsilon,
            config.ema,
            config.reset_interval,
        )
        key = ("rdumb", groups, plan, num_classes, settings)

        def build() -> GroupedRDumb:
            return GroupedRDumb(model, groups, plan=plan, num_classes=num_classes, config=config)

        return self._checkout(model, key, build)


_POOL = _Pool()


# --- trajectories ----------------------------------------------------------------------------


def run_trajectories(
    model: nn.Module,
    windows: Sequence[Tensor],
    *,
    spec: ModelSpec,
    config: EstimateConfig,
    device: torch.device,
    plan: FastPlan | None = None,
    progress: Progress | None = None,
    features: bool = False,
) -> list[Trajectory]:
    """`run_trajectory` for V windows of equal size at once (calibration variants; V = 1 for an
    estimate). Same seeded probe and batch order as the plain path for each window.

    Features are recorded for V = 1 only (the estimate's embedding distances).
    """
    from flipwatch.workers.estimation.trajectory import (
        Predictions,
        Trajectory,
        batch_order,
        flip_signals,
    )

    if not windows:
        return []
    n = len(windows[0])
    if any(len(w) != n for w in windows):
        raise ValueError("grouped trajectories need windows of equal size")
    if n < config.min_images:
        raise ValueError(
            f"{n} images are too few: an estimate needs at least {config.min_images} "
            f"(one adaptation batch is {config.batch_size})"
        )
    groups = len(windows)
    features = features and groups == 1
    generator = torch.Generator().manual_seed(config.seed)
    probe_index = torch.randperm(n, generator=generator)[: config.probe_size]
    order = batch_order(n, config.batch_size, config.steps, generator)
    checkpoints = set(config.snapshot_steps())
    plan = plan or choose_plan(model, spec, device, batch_size=config.batch_size)

    with (
        using_threads(plan.threads),
        fast_kernels(plan.device),
        _POOL.source(model, plan) as source_model,
        _POOL.rdumb(model, groups, plan, spec.num_classes, config) as rdumb,
    ):
        torch.manual_seed(config.seed)
        stacked = windows[0].unsqueeze(0) if groups == 1 else torch.stack(list(windows))
        if plan.device.type == "cuda" and stacked.numel() <= UPLOAD_BYTES:
            stacked = stacked.to(plan.device)
        on_host = stacked.device.type == "cpu" and plan.device.type == "cuda"
        probes = stacked[:, probe_index.to(stacked.device)]
        source_probs, source_feats = source_model.predict(
            probes.flatten(0, 1), spec.input, features=features
        )
        rdumb.start()
        order = order.to(stacked.device)
        snapshots: dict[int, tuple[Tensor, Tensor | None]] = {}
        for k in range(config.steps + 1):
            if k in checkpoints:
                snapshots[k] = rdumb.snapshot(
                    probes,
                    spec.input,
                    chunk_size=config.chunk_size,
                    features=features and k == config.steps,
                )
            if k == config.steps:
                break
            batch = stacked[:, order[k]].flatten(0, 1)
            if on_host:
                batch = batch.pin_memory()
            rdumb.step(rdumb.normalize(batch, spec.input))
            if progress is not None:
                progress(k + 1, config.steps)
        used = (rdumb.selected_total.double() / (config.steps * config.batch_size)).tolist()

    def host(t: Tensor | None) -> Tensor | None:
        # A copy made outside inference mode: callers may modify it in place.
        return None if t is None else t.to("cpu", copy=True)

    p = len(probe_index)
    trajectories: list[Trajectory] = []
    for v in range(groups):
        source = Predictions(host(source_probs[v * p : (v + 1) * p]), host(source_feats))
        adapted = {
            k: Predictions(host(probs[v]), host(feats)) for k, (probs, feats) in snapshots.items()
        }
        trajectories.append(
            Trajectory(
                probe_size=p,
                num_images=n,
                steps=config.steps,
                source=source,
                adapted=adapted,
                signals=flip_signals(source, adapted),
                used_fraction=used[v],
                path=plan.describe(),
            )
        )
    return trajectories
