"""The quality benchmark's two MNIST architectures, trained offline once and cached.

`mnist_cnn` is the demo model (flipwatch.demos.data, its own cache); `mnist_resnet` is a small
ResNet (zoo.mnist_resnet) trained on the same 3,000 images with the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from flipwatch.demos.data import (
    DEMO_RECIPE,
    MNIST_MEAN,
    MNIST_STD,
    demo_splits,
    ensure_demo_model,
    evaluate_accuracy,
    train_demo_model,
)
from flipwatch.workers.estimation.spec import InputSpec, ModelSpec

ARCHITECTURES = ("mnist_cnn", "mnist_resnet")


def ensure_model(arch: str, cache_dir: Path, log: Callable[[str], None]) -> ModelSpec:
    """The trained model's spec (absolute weights path); trains once per recipe."""
    if arch == "mnist_cnn":
        return ensure_demo_model(cache_dir, log=log)[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    recipe = json.dumps({"arch": arch, **asdict(DEMO_RECIPE)}, sort_keys=True)
    tag = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    weights = cache_dir / f"{arch}-{tag}.pt"
    spec = ModelSpec(
        name=f"{arch}-demo",
        format="entrypoint",
        entrypoint=arch,
        weights=str(weights.resolve()),
        num_classes=10,
        input=InputSpec(color="L", size=[28, 28], mean=[MNIST_MEAN], std=[MNIST_STD]),
    )
    if weights.exists():
        return spec
    cache_dir.mkdir(parents=True, exist_ok=True)
    splits = demo_splits(DEMO_RECIPE.split_seed)
    started = time.perf_counter()
    model = train_demo_model(
        *splits.train,
        epochs=DEMO_RECIPE.epochs,
        seed=DEMO_RECIPE.train_seed,
        augment=DEMO_RECIPE.augment,
        batch_size=DEMO_RECIPE.batch_size,
        lr=DEMO_RECIPE.lr,
        weight_decay=DEMO_RECIPE.weight_decay,
        widths=DEMO_RECIPE.widths,
        arch=arch,
    )
    log(
        f"trained {arch} in {time.perf_counter() - started:.0f} s: held-out accuracy "
        f"{evaluate_accuracy(model, *splits.heldout):.3f}"
    )
    torch.save(model.state_dict(), weights)
    return spec
