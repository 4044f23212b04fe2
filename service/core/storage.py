"""Content-addressed file storage under the data directory.

Images live at `data_dir/images/ab/cd/<sha256>.<ext>`, weights at `data_dir/models/<sha256>.pt`.
Writes go to a temporary file in the same folder and are renamed into place, so a reader never sees
a partial file and two writers of the same content simply produce the same file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_path(data_dir: Path, digest: str, image_format: str) -> Path:
    return (
        data_dir.resolve()
        / "images"
        / digest[:2]
        / digest[2:4]
        / f"{digest}.{EXTENSIONS[image_format]}"
    )


def weights_path(data_dir: Path, digest: str) -> Path:
    return data_dir.resolve() / "models" / f"{digest}.pt"


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (weights, cached demo files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, fsynced and renamed
    into place, so a reader sees the old file or the whole new one, never a part.

    The temporary file is created private (0600); `mode` sets the final permissions (default:
    left private). Used for images, the local admin token and the demo's cached files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def store_content(path: Path, data: bytes) -> Path:
    """Write content-addressed `data` unless `path` exists (same name means same content)."""
    if path.exists():
        return path
    return write_atomic(path, data)
