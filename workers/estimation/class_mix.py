"""Class mixes: skewed subsets of a labeled set, and resampling it to given class proportions.

Calibration measures clean and shifted variants whose classes come in a skewed mix (a few classes
only, one dominant class, a long tail), so that what only the mix does to a signal is part of
what selection judges. Estimates resample the reference set to a window's estimated proportions
to measure what the mix alone does to the flips (`window_features.py`).

A subset is named `<kind>` or `<kind>:<n>` (n images in total): kinds are `balanced` (the set's
own proportions), `three` (three classes), `dominant` (one class holds half the window) and
`longtail` (class k holds a share ∝ 0.6^k).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MIX_KINDS", "mix_proportions", "parse_mix", "resample_to", "subset_indices"]

MIX_KINDS = ("balanced", "three", "dominant", "longtail")


def parse_mix(name: str) -> tuple[str, int | None]:
    """'dominant:200' -> ('dominant', 200); 'three' -> ('three', None)."""
    kind, _, size = name.partition(":")
    if kind not in MIX_KINDS:
        raise ValueError(f"unknown class mix {kind!r}; known: {', '.join(MIX_KINDS)}")
    if size and (not size.isdigit() or int(size) < 2):
        raise ValueError(f"class mix size must be an integer >= 2, got {size!r}")
    return kind, int(size) if size else None


def mix_proportions(
    kind: str, num_classes: int, generator: torch.Generator, present: Tensor | None = None
) -> Tensor:
    """(C,) float64 class proportions of a mix; which classes are favoured is drawn.

    `present` (class indices) limits the mix to the classes a labeled set holds: a reference
    set rarely holds every class of a 1000-class model, and three classes drawn among all of
    them would often be three it has no image of. With every class present the draw is the
    same as without `present`.
    """
    classes = torch.arange(num_classes) if present is None else present.cpu().long()
    if kind not in MIX_KINDS:
        raise ValueError(f"unknown class mix {kind!r}")
    if len(classes) == 0:
        raise ValueError("a class mix needs at least one class with images")
    order = classes[torch.randperm(len(classes), generator=generator)]
    q = torch.zeros(num_classes, dtype=torch.float64)
    if kind == "balanced":
        q[classes] = 1.0
    elif kind == "three":
        q[order[:3]] = 1.0
    elif kind == "dominant" and len(classes) > 1:
        q[classes] = 0.5 / (len(classes) - 1)
        q[order[0]] = 0.5
    elif kind == "dominant":
        q[order[0]] = 1.0
    else:  # longtail
        q[order] = torch.tensor([0.6**k for k in range(len(classes))], dtype=torch.float64)
    return q / q.sum()


def resample_to(
    labels: Tensor, proportions: Tensor, size: int, generator: torch.Generator
) -> Tensor:
    """Indices of `size` images whose labels follow `proportions` (C,) as closely as counts allow.

    Each class gets round(q_c·size) images (largest remainders fix the total), drawn without
    replacement while the class has enough images and with replacement beyond that. Classes with
    no image in `labels` give their share to the others. Returned in a seeded random order.
    """
    q = proportions.detach().double().cpu().clamp(min=0)
    available = torch.bincount(labels.cpu(), minlength=q.numel())
    q = torch.where(available > 0, q, torch.zeros_like(q))
    if float(q.sum()) <= 0:
        raise ValueError("no class with a positive proportion has any image")
    q = q / q.sum()
    counts = torch.floor(q * size).long()
    remainder = size - int(counts.sum())
    if remainder > 0:
        extra = torch.argsort(q * size - counts, descending=True, stable=True)[:remainder]
        counts[extra] += 1
    chosen: list[Tensor] = []
    for cls in torch.nonzero(counts).flatten().tolist():
        pool = torch.nonzero(labels.cpu() == cls).flatten()
        need = int(counts[cls])
        pool = pool[torch.randperm(len(pool), generator=generator)]
        if need <= len(pool):
            chosen.append(pool[:need])
        else:
            reps = math.ceil(need / len(pool))
            chosen.append(pool.repeat(reps)[:need])
    index = torch.cat(chosen)
    return index[torch.randperm(len(index), generator=generator)]


def subset_indices(
    labels: Tensor, name: str, *, num_classes: int, seed: int, min_size: int = 128
) -> Tensor:
    """Indices of the subset `name` (see the module doc) of a labeled set.

    Without a size, the subset keeps as many images as the mix allows without repeating any
    (every image of the three classes; the dominant class whole, the others filling the other
    half; the long tail scaled so its head class is whole), and at least `min_size` (two
    adaptation batches; images repeat when the set is too small for that).
    """
    kind, size = parse_mix(name)
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    q = mix_proportions(kind, num_classes, generator, torch.nonzero(counts).flatten())
    if size is None:
        with torch.no_grad():
            ratio = torch.where(q > 0, counts / q.clamp(min=1e-12), torch.full_like(q, math.inf))
        size = max(min_size, int(float(ratio.min())))
    return resample_to(labels, q, size, generator)
