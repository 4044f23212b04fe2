"""Decoding and resizing images into the uint8 tensors the estimator works on.

Images travel as uint8 (N, C, H, W) at the model's input size: 4× smaller than float32 (a 1000-image
224×224 window is 150 MB), and normalisation is cheap to redo per batch.

Two decoders give the same geometry: `decode_images` decodes JPEGs in one batch with
`torchvision.io.decode_jpeg` (nvJPEG on a GPU) and resizes them as tensors; every other format,
and any JPEG torchvision refuses, goes through Pillow (`decode_image`). The two agree to a few
grey levels (different resampling kernels), well inside what the estimator notices.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from flipwatch.workers.estimation.spec import InputSpec, ModelSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """Images that cannot be used; `problems` maps each file to its reason."""

    def __init__(self, message: str, problems: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or {}


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def to_eight_bit(image: Image.Image) -> Image.Image:
    """High-bit-depth grayscale as 8-bit, the full 16-bit range onto 0..255 (value / 257).

    Pillow's own `convert` saturates such pixels at 255, so a 16-bit PNG from a medical or
    industrial camera would arrive nearly white. Mode `I` (32-bit) is read as 16-bit data, the
    usual source of it, and clipped. Float images (mode `F`) have no fixed range and are refused.
    """
    if image.mode == "F":
        raise ValueError(
            "32-bit float pixels have no fixed value range; save the image with 8 or 16 bits"
        )
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_model_input(image: Image.Image, spec: InputSpec) -> Tensor:
    """PIL image -> uint8 (C, H, W) in the spec's color mode and size.

    With `resize` the short side goes to that length and the center is cropped to `size`
    (torchvision's eval transform); `center_crop` alone resizes the short side to fit `size`;
    otherwise the image is stretched to `size`.
    """
    height, width = spec.size
    image = to_eight_bit(image).convert(spec.color)
    if spec.resize or spec.center_crop:
        short = spec.resize or max(height, width)
        scale = short / min(image.size)
        new_size = (
            max(width, round(image.width * scale)),
            max(height, round(image.height * scale)),
        )
        image = image.resize(new_size, Image.Resampling.BILINEAR)
        left = (image.width - width) // 2
        top = (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    elif image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_image(data: bytes, spec: ModelSpec, *, name: str = "image") -> Tensor:
    """Bytes of one image file -> uint8 (C, H, W); ImageError names the file and the reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_model_input(image, spec.input)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ImageError(f"{name}: {reason}", {name: reason}) from exc


JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def resize_tensor(image: Tensor, spec: InputSpec) -> Tensor:
    """uint8 (C, H, W) → (C, h, w) at the spec's size, with `to_model_input`'s geometry
    (short side to `resize`, center crop; or a stretch), bilinear with antialiasing as Pillow."""
    from torchvision.transforms.v2 import functional as TF

    height, width = spec.size
    in_h, in_w = image.shape[-2:]
    if spec.resize or spec.center_crop:
        short = spec.resize or max(height, width)
        scale = short / min(in_h, in_w)
        new_h = max(height, round(in_h * scale))
        new_w = max(width, round(in_w * scale))
        if (new_h, new_w) != (in_h, in_w):
            image = TF.resize(image, [new_h, new_w], antialias=True)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return image[..., top : top + height, left : left + width].contiguous()
    if (in_h, in_w) != (height, width):
        image = TF.resize(image, [height, width], antialias=True)
    return image.contiguous()


def decode_images(
    files: Sequence[bytes],
    spec: ModelSpec,
    *,
    names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bytes of many image files → uint8 (N, C, H, W) at the model's input size.

    JPEGs decode as one batch with `torchvision.io.decode_jpeg`, on `device` when it is a GPU
    (the result then stays there); other formats, and JPEGs torchvision cannot decode (a
    batch failure falls back file by file), go through Pillow. One ImageError lists every
    unusable file.
    """
    names = list(names) if names is not None else [f"image {i}" for i in range(len(files))]
    device = torch.device(device) if device is not None else torch.device("cpu")
    out: list[Tensor | None] = [None] * len(files)
    problems: dict[str, str] = {}
    jpegs = [i for i, data in enumerate(files) if is_jpeg(data)]
    for i, image in zip(jpegs, _decode_jpegs([files[i] for i in jpegs], spec, device), strict=True):
        if image is not None:
            out[i] = image
    for i, data in enumerate(files):
        if out[i] is not None:
            continue
        try:
            out[i] = decode_image(data, spec, name=names[i]).to(device)
        except ImageError as exc:
            problems.update(exc.problems)
    _raise_problems(problems)
    if not out:
        raise ImageError("no images to load")
    return torch.stack([t for t in out if t is not None])


def _decode_jpegs(files: Sequence[bytes], spec: ModelSpec, device: torch.device) -> list:
    """Decoded and resized JPEGs, None where torchvision could not decode one."""
    if not files:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if spec.input.color == "L" else ImageReadMode.RGB
    data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    try:
        decoded: list[Tensor | None] = list(decode_jpeg(data, mode=mode, device=device))
    except RuntimeError:
        decoded = []
        for one in data:
            try:
                decoded.append(decode_jpeg(one, mode=mode, device=device))
            except RuntimeError:
                decoded.append(None)  # Pillow gets a try (and names the reason)
    return [None if img is None else resize_tensor(img, spec.input) for img in decoded]


def load_images(paths: Iterable[Path], spec: ModelSpec) -> Tensor:
    """Decode every file (JPEGs in one batch); any failure raises one ImageError listing all bad
    files."""
    files: list[bytes] = []
    names: list[str] = []
    problems: dict[str, str] = {}
    for path in paths:
        try:
            files.append(path.read_bytes())
            names.append(str(path))
        except OSError as exc:
            problems[str(path)] = f"cannot read: {exc.strerror or exc}"
    if not files and not problems:
        raise ImageError("no images to load")
    images: Tensor | None = None
    try:
        images = decode_images(files, spec, names=names) if files else None
    except ImageError as exc:
        problems.update(exc.problems)
    _raise_problems(problems)
    assert images is not None
    return images


def _raise_problems(problems: dict[str, str]) -> None:
    if problems:
        shown = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ImageError(f"{len(problems)} file(s) are not usable images: {shown}{more}", problems)


def list_image_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files below `folder`, sorted (every one must be an image)."""
    if not folder.is_dir():
        raise ImageError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ImageError(f"{folder} holds no images")
    return files


def load_image_folder(
    folder: str | Path, spec: ModelSpec, *, limit: int | None = None, seed: int = 0
) -> Tensor:
    """Images below a folder -> uint8 (N, C, H, W), in sorted path order.

    With `limit`, a seeded uniform sample of that many files is decoded (still in path order): a
    trajectory of T steps sees at most T·64 images, so a huge folder need not fit in memory.
    """
    files = list_image_files(Path(folder))
    if limit is not None and len(files) > limit:
        chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit]
        files = [files[i] for i in sorted(chosen.tolist())]
    return load_images(files, spec)


def find_classes(root: Path) -> list[str]:
    """Class folder names sorted as torchvision's ImageFolder sorts them."""
    if not root.is_dir():
        raise ImageError(f"{root} is not a folder")
    return sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))


def load_labeled_folder(root: str | Path, spec: ModelSpec) -> tuple[Tensor, Tensor, list[str]]:
    """An ImageFolder tree `root/<class>/*` -> (uint8 (N,C,H,W), int64 labels (N,), classes)."""
    root = Path(root)
    classes = find_classes(root)
    if not classes:
        raise ImageError(f"{root} has no class folders (expected root/<class>/<image>)")
    if len(classes) != spec.num_classes:
        raise ImageError(
            f"{root} has {len(classes)} class folders but model {spec.name!r} has "
            f"{spec.num_classes} classes"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        paths.extend(files)
        labels.extend([index] * len(files))
    if not paths:
        raise ImageError(f"{root} holds no images")
    return load_images(paths, spec), torch.tensor(labels, dtype=torch.int64), classes


def normalize(images: Tensor, spec: InputSpec, *, device: torch.device | None = None) -> Tensor:
    """uint8 (N, C, H, W) -> float32 normalised with the spec's mean and std, on `device`."""
    x = images.to(device=device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
