"""A deterministic corruption suite (ImageNet-C in spirit) for images of any size, in torch only.

Images are float (N, C, H, W) in [0, 1] with C = 1 or 3 (uint8 is accepted and returned as uint8).
Each family takes a severity 1..5 (mild to severe) and a `torch.Generator`: the same generator
state gives bit-identical output on the same device. `imagecorruptions` is not usable here (it
refuses images under 32×32 and does not import on this stack, see offline-data.md), so these are
re-implementations with parameters chosen for small images: blur and warp radii scale with
min(H, W)/64 above 64 pixels. Random draws happen on the generator's device and are then moved to
the images' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from flipwatch.workers.estimation.families import FAMILIES, SEVERITIES

__all__ = ["CORRUPTIONS", "Corruption", "corrupt", "corruption_suite"]

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]


# ---- helpers ------------------------------------------------------------------------------------


def _rand(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws of `shape`, made on the generator's device, in like's dtype/device."""
    out = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return out.to(device=like.device, dtype=like.dtype)


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    out = torch.randn(tuple(shape), generator=generator, device=generator.device)
    return out.to(device=like.device, dtype=like.dtype)


def _scale(x: Tensor) -> float:
    """Spatial scale factor: 1 up to 64 px, then min(H, W)/64 (224 px → 3.5)."""
    return max(1.0, min(x.shape[-2:]) / 64)


def _depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every channel of x (N, C, H, W) with one (kh, kw) kernel, replicate padding."""
    kh, kw = kernel.shape
    n, c, h, w = x.shape
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    weight = kernel.to(x.dtype)[None, None].expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def _gaussian_kernel1d(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Warp x (N, C, H, W) by per-image affine matrices theta (N, 2, 3), zeros outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _smooth_noise(
    n: int, h: int, w: int, cells: int, generator: torch.Generator, like: Tensor
) -> Tensor:
    """Low-frequency noise (n, 1, h, w) in [0, 1]: a cells×cells uniform grid, bicubic-upsampled."""
    coarse = _rand((n, 1, cells, cells), generator, like)
    up = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return up.clamp(0, 1)


# ---- noise ------------------------------------------------------------------------------------


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Additive N(0, σ²) pixel noise, σ = 0.04 … 0.26."""
    sigma = (0.04, 0.08, 0.12, 0.18, 0.26)[severity - 1]
    return x + sigma * _randn(x.shape, generator, x)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Poisson (photon) noise: Poisson(λ·x)/λ with λ = 100 … 6 photons at full intensity."""
    lam = (100.0, 50.0, 25.0, 12.0, 6.0)[severity - 1]
    rate = (x.float() * lam).to(generator.device)
    return (torch.poisson(rate, generator=generator) / lam).to(device=x.device, dtype=x.dtype)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Salt-and-pepper noise on a fraction 0.01 … 0.17 of each image's values (at least one).

    The hit values are the ones with the smallest uniform draws and each has its own black/white
    draw, so a higher severity hits a superset of the same values with the same colours.
    """
    amount = (0.01, 0.03, 0.06, 0.10, 0.17)[severity - 1]
    n = x.shape[0]
    flat = x.reshape(n, -1)
    hits = max(1, round(amount * flat.shape[1]))
    order = _rand(flat.shape, generator, x).argsort(dim=1, stable=True)[:, :hits]
    salt = (_rand(flat.shape, generator, x) < 0.5).to(x.dtype)
    out = flat.clone()
    out.scatter_(1, order, salt.gather(1, order))
    return out.reshape(x.shape)


# ---- blur ---------------------------------------------------------------------------------------


def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Separable Gaussian blur, σ = 0.5 … 2.0 px (scaled for large images)."""
    sigma = (0.5, 0.8, 1.1, 1.5, 2.0)[severity - 1] * _scale(x)
    k = _gaussian_kernel1d(sigma, x.dtype, x.device)
    return _depthwise(_depthwise(x, k[None, :]), k[:, None])


def defocus_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Disk (defocus) blur of radius 1 … 3 px (scaled for large images)."""
    radius = (1.0, 1.5, 2.0, 2.5, 3.0)[severity - 1] * _scale(x)
    r = math.ceil(radius)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2 + 1e-6).to(x.dtype)
    return _depthwise(x, disk / disk.sum())


def motion_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Blur along a line of 3 … 11 px (scaled) at a random angle in [−45°, 45°] per image."""
    length = (3, 5, 7, 9, 11)[severity - 1] * _scale(x)
    angles = (_rand((x.shape[0],), generator, x) - 0.5) * (math.pi / 2)
    r = math.ceil((length - 1) / 2)
    size = 2 * r + 1
    t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, int(4 * length), device=x.device)
    cols = (t[None, :] * angles.cos()[:, None]).round().long() + r  # (N, T)
    rows = (t[None, :] * angles.sin()[:, None]).round().long() + r
    kernels = torch.zeros(x.shape[0], size * size, dtype=x.dtype, device=x.device)
    kernels.scatter_add_(1, rows * size + cols, torch.ones_like(rows, dtype=x.dtype))
    kernels = (kernels / kernels.sum(1, keepdim=True)).reshape(x.shape[0], 1, size, size)
    n, c, h, w = x.shape
    padded = F.pad(x, (r, r, r, r), mode="replicate").reshape(1, n * c, h + 2 * r, w + 2 * r)
    weight = kernels.repeat_interleave(c, dim=0)  # (N·C, 1, size, size)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


# ---- photometric ------------------------------------------------------------------------------


def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Pull pixels towards the per-image mean: contrast factor 0.9 … 0.2."""
    factor = (0.9, 0.75, 0.55, 0.35, 0.2)[severity - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Add a constant 0.02 … 0.4 to every pixel (roughly doubling per severity)."""
    return x + (0.02, 0.05, 0.1, 0.2, 0.4)[severity - 1]


def fog(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Blend with smooth low-frequency haze: (x + a·haze)/(1 + a), a = 0.04 … 0.6."""
    a = (0.04, 0.08, 0.16, 0.32, 0.6)[severity - 1]
    haze = _smooth_noise(x.shape[0], x.shape[2], x.shape[3], 4, generator, x)
    return (x + a * haze) / (1 + a)


def invert_partial(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Mix with the inverted image: (1 − α)·x + α·(1 − x), α = 0.02 … 0.32."""
    alpha = (0.02, 0.04, 0.08, 0.16, 0.32)[severity - 1]
    return (1 - alpha) * x + alpha * (1 - x)


def posterize(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Keep only 5 … 1 bits per channel (8-bit quantisation, as PIL's posterize)."""
    bits = (5, 4, 3, 2, 1)[severity - 1]
    levels = torch.floor(x * 255 + 0.5).clamp(0, 255)
    step = 2 ** (8 - bits)
    return torch.floor(levels / step) * step / 255


# ---- digital / geometric ------------------------------------------------------------------------


def pixelate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Area-downsample to 0.8 … 0.25 of the size, then nearest-upsample back."""
    frac = (0.8, 0.6, 0.45, 0.33, 0.25)[severity - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * frac)), max(1, int(w * frac))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def jpeg(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """JPEG re-encoding at quality 50 … 7 (torchvision, on uint8 on the CPU)."""
    quality = (50, 30, 20, 12, 7)[severity - 1]
    as_uint8 = (x * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    out = TF.jpeg(as_uint8, quality=quality)
    return out.to(device=x.device, dtype=x.dtype) / 255


def elastic(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Small elastic warp: a smooth random displacement of up to 0.5 … 2.5 px (scaled)."""
    alpha = (0.5, 1.0, 1.5, 2.0, 2.5)[severity - 1] * _scale(x)
    n, _, h, w = x.shape
    field = torch.cat(
        [_smooth_noise(n, h, w, 4, generator, x), _smooth_noise(n, h, w, 4, generator, x)], dim=1
    )  # (N, 2, H, W) in [0, 1]
    disp = (field * 2 - 1) * alpha  # pixels
    ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device) * (h - 1) / h
    xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device) * (w - 1) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None] + torch.stack(
        [disp[:, 0] * 2 / w, disp[:, 1] * 2 / h], dim=-1
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rotate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Rotate about the centre by 5 … 30 degrees, direction random per image; zeros outside."""
    degrees = (5.0, 10.0, 15.0, 22.0, 30.0)[severity - 1]
    sign = torch.where(_rand((x.shape[0],), generator, x) < 0.5, -1.0, 1.0).to(x.dtype)
    angle = sign * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


def translate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Shift by 4 … 20 % of the size in a random direction per image; zeros outside."""
    frac = (0.04, 0.08, 0.12, 0.16, 0.2)[severity - 1]
    angle = _rand((x.shape[0],), generator, x) * (2 * math.pi)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    tx, ty = 2 * frac * angle.cos(), 2 * frac * angle.sin()  # normalised coordinates span 2
    theta = torch.stack([torch.stack([one, zero, tx], 1), torch.stack([zero, one, ty], 1)], 1)
    return _affine(x, theta)


def occlusion(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Random erasing: a square of side 15 … 55 % of the size, random place, one random grey."""
    frac = (0.15, 0.25, 0.35, 0.45, 0.55)[severity - 1]
    n, _, h, w = x.shape
    side_h, side_w = max(1, round(h * frac)), max(1, round(w * frac))
    draws = _rand((n, 3), generator, x)
    top = (draws[:, 0] * (h - side_h + 1)).floor().long().clamp(max=h - side_h)
    left = (draws[:, 1] * (w - side_w + 1)).floor().long().clamp(max=w - side_w)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + side_h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + side_w)[:, None])  # (N, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (N, 1, H, W)
    return torch.where(mask, draws[:, 2].reshape(n, 1, 1, 1), x)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "contrast": contrast,
    "brightness": brightness,
    "fog": fog,
    "invert_partial": invert_partial,
    "posterize": posterize,
    "pixelate": pixelate,
    "jpeg": jpeg,
    "elastic": elastic,
    "rotate": rotate,
    "translate": translate,
    "occlusion": occlusion,
}

if tuple(CORRUPTIONS) != FAMILIES:  # the torch-free list the API validates against
    raise ImportError("corruptions.CORRUPTIONS and families.FAMILIES disagree")


def corrupt(images: Tensor, family: str, severity: int, *, generator: torch.Generator) -> Tensor:
    """Apply one corruption to images (N, C, H, W), C in {1, 3}, float in [0, 1] or uint8.

    Returns the same shape, dtype and device, clamped to [0, 1] (uint8: rounded to 0..255).
    """
    if family not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {family!r}; choose one of {sorted(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"images must be (N, C, H, W) with N >= 1 and C = 1 or 3, got {tuple(images.shape)}"
        )
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
    work_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(work_dtype) / 255 if is_uint8 else images.to(work_dtype)
    out = CORRUPTIONS[family](x, severity, generator).clamp(0, 1)
    if is_uint8:
        return (out * 255).round().to(torch.uint8)
    return out.to(images.dtype)


def corruption_suite(
    families: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES
) -> list[tuple[str, int]]:
    """All (family, severity) pairs, families in registry order unless given; names validated."""
    names = list(CORRUPTIONS) if families is None else list(families)
    unknown = [f for f in names if f not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; choose from {sorted(CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"severities must lie in 1..5, got {bad}")
    return [(f, s) for f in names for s in severities]
