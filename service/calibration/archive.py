"""Safe extraction of a labeled reference set (zip or tar of an ImageFolder tree).

Nothing from the archive is trusted: member names may not be absolute or climb out with `..`, links
and device files are refused, and both the entry count and the bytes actually written are capped
(declared sizes can lie), and a zip entry that claims to inflate more than `max_ratio` times is a
bomb. Files are written one by one into a fresh folder; never `extractall`.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from flipwatch.service.core.errors import ArchiveRejected

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageFolder:
    """The extracted reference set: `root` holds one folder per class."""

    root: Path
    classes: list[str]
    image_count: int


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    size: int
    open: object  # () -> IO[bytes]
    packed: int = 0  # compressed size (zip); 0 when unknown


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path to write a member to, None to skip it (OS junk), or ArchiveRejected."""
    if "\x00" in name or "\\" in name:
        raise ArchiveRejected(f"archive member {name!r} has a NUL or backslash in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise ArchiveRejected(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveRejected(f"archive member {name!r} climbs out of the archive with '..'")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return PurePosixPath(*parts)


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveRejected(f"archive member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ArchiveRejected(f"archive member {info.filename!r} is encrypted")
        yield _Member(
            name=info.filename,
            is_dir=info.is_dir(),
            size=info.file_size,
            open=lambda info=info: archive.open(info),
            packed=info.compress_size,
        )


def _tar_members(archive: tarfile.TarFile) -> Iterator[_Member]:
    for info in archive:
        if info.issym() or info.islnk():
            raise ArchiveRejected(f"archive member {info.name!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise ArchiveRejected(f"archive member {info.name!r} is not a regular file or folder")
        yield _Member(
            name=info.name,
            is_dir=info.isdir(),
            size=info.size,
            open=lambda info=info: archive.extractfile(info),
        )


@contextmanager
def _open_archive(path: Path, filename: str) -> Iterator[list[_Member]]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            yield list(_zip_members(archive))
        return
    try:
        archive = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveRejected(
            f"{filename!r} is neither a zip nor a tar (.tar, .tar.gz, .tar.bz2, .tar.xz) archive"
        ) from exc
    with archive:
        try:
            yield list(_tar_members(archive))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveRejected(f"{filename!r} is a damaged tar archive: {exc}") from exc


def extract_image_folder(
    archive_path: Path,
    dest: Path,
    *,
    filename: str,
    max_entries: int,
    max_bytes: int,
    max_ratio: float = 200.0,
) -> ImageFolder:
    """Extract the archive into `dest` (created, must not exist) and check its ImageFolder shape.

    On any failure `dest` is removed and ArchiveRejected says which member and why.
    """
    dest.mkdir(parents=True, exist_ok=False)
    try:
        _extract(
            archive_path,
            dest,
            filename=filename,
            max_entries=max_entries,
            max_bytes=max_bytes,
            max_ratio=max_ratio,
        )
        return _image_folder(dest, filename=filename)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract(
    archive_path: Path,
    dest: Path,
    *,
    filename: str,
    max_entries: int,
    max_bytes: int,
    max_ratio: float,
) -> None:
    root = dest.resolve()
    with _open_archive(archive_path, filename) as members:
        if len(members) > max_entries:
            raise ArchiveRejected(
                f"{filename!r} has {len(members)} entries; the limit is {max_entries}"
            )
        for member in members:
            if member.packed and member.size > max_ratio * member.packed and member.size > CHUNK:
                raise ArchiveRejected(
                    f"archive member {member.name!r} unpacks {member.size} bytes from "
                    f"{member.packed} (over {max_ratio:.0f}:1): a compression bomb"
                )
        declared = sum(m.size for m in members if not m.is_dir)
        if declared > max_bytes:
            raise ArchiveRejected(
                f"{filename!r} unpacks to {declared} bytes; the limit is {max_bytes}"
            )
        written = 0
        for member in members:
            relative = safe_member_path(member.name)
            if relative is None:
                continue
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                raise ArchiveRejected(f"archive member {member.name!r} escapes the target folder")
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source: IO[bytes] | None = member.open()  # type: ignore[operator]
            if source is None:
                raise ArchiveRejected(f"archive member {member.name!r} cannot be read")
            try:
                with source, open(target, "xb") as out:
                    while chunk := source.read(CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise ArchiveRejected(
                                f"{filename!r} unpacks to more than {max_bytes} bytes "
                                f"(at member {member.name!r})"
                            )
                        out.write(chunk)
            except FileExistsError as exc:
                raise ArchiveRejected(f"archive member {member.name!r} appears twice") from exc
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
                raise ArchiveRejected(
                    f"archive member {member.name!r} cannot be extracted: {exc}"
                ) from exc


def _image_folder(dest: Path, *, filename: str) -> ImageFolder:
    root = dest
    entries = list(root.iterdir())
    # One wrapping folder (`reference/cat/...`) is accepted: a reference set has 2+ classes.
    if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
        root = entries[0]
    loose = [p.name for p in root.iterdir() if p.is_file()]
    if loose:
        raise ArchiveRejected(
            f"{filename!r}: files {loose[:3]} sit at the top level; an ImageFolder tree puts each "
            "image in a folder named after its class (class_a/img1.jpg, class_b/img2.png, ...)"
        )
    classes, count = [], 0
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        images = [
            p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if images:
            classes.append(class_dir.name)
            count += len(images)
    if len(classes) < 2:
        raise ArchiveRejected(
            f"{filename!r} holds {len(classes)} class folder(s) with images; a reference set needs "
            "at least two (one folder per class)"
        )
    return ImageFolder(root=root, classes=classes, image_count=count)
