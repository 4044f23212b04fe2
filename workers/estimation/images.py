"""Decoding and resizing images into the uint8 tensors the estimator works on.

Images travel as uint8 (N, C, H, W) at the model's input size: 4× smaller than float32 (a 1000-image
224×224 window is 150 MB), and normalisation is cheap to redo per batch.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
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


def to_model_input(image: Image.Image, spec: InputSpec) -> Tensor:
    """PIL image -> uint8 (C, H, W) in the spec's color mode and size.

    With `resize` the short side goes to that length and the center is cropped to `size`
    (torchvision's eval transform); `center_crop` alone resizes the short side to fit `size`;
    otherwise the image is stretched to `size`.
    """
    height, width = spec.size
    image = image.convert(spec.color)
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


def load_images(paths: Iterable[Path], spec: ModelSpec) -> Tensor:
    """Decode every file; any failure raises one ImageError listing all bad files."""
    tensors: list[Tensor] = []
    problems: dict[str, str] = {}
    for path in paths:
        try:
            tensors.append(decode_image(path.read_bytes(), spec, name=str(path)))
        except ImageError as exc:
            problems.update(exc.problems)
        except OSError as exc:
            problems[str(path)] = f"cannot read: {exc.strerror or exc}"
    if problems:
        shown = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ImageError(f"{len(problems)} file(s) are not usable images: {shown}{more}", problems)
    if not tensors:
        raise ImageError("no images to load")
    return torch.stack(tensors)


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
