"""Safe extraction of a reference archive (zip/tar ImageFolder): traversal, links, limits, shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from flipwatch.service.calibration.archive import extract_image_folder
from flipwatch.service.core.errors import ArchiveRejected
from tests.factories import REFERENCE, tar_bytes, zip_bytes


def extract(tmp_path: Path, data: bytes, **limits: int):
    archive = tmp_path / "upload"
    archive.write_bytes(data)
    dest = tmp_path / "out"
    return extract_image_folder(
        archive,
        dest,
        filename="upload",
        max_entries=limits.get("max_entries", 100),
        max_bytes=limits.get("max_bytes", 1 << 20),
    ), dest


class TestExtractImageFolder:
    @pytest.mark.parametrize("pack", [zip_bytes, tar_bytes])
    def test_extracts_classes_under_one_wrapping_folder(self, tmp_path, pack):
        folder, dest = extract(tmp_path, pack(REFERENCE))
        assert folder.root == dest / "ref"
        assert (folder.classes, folder.image_count) == (["cat", "dog"], 6)

    @pytest.mark.parametrize(
        "name", ["../evil.png", "/abs/evil.png", "a/../../evil.png", "C:/x.png"]
    )
    @pytest.mark.parametrize("pack", [zip_bytes, tar_bytes])
    def test_refuses_path_traversal(self, tmp_path, pack, name):
        with pytest.raises(ArchiveRejected):
            extract(tmp_path, pack(REFERENCE | {name: b"x"}))
        assert not (tmp_path / "out").exists()
        assert not (tmp_path / "evil.png").exists()

    def test_refuses_zip_symlink(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="symbolic link"):
            extract(tmp_path, zip_bytes(REFERENCE, symlinks={"ref/cat/link.png": "/etc/passwd"}))

    def test_refuses_tar_symlink(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="link"):
            extract(tmp_path, tar_bytes(REFERENCE, links={"ref/cat/link.png": "/etc/passwd"}))

    def test_refuses_too_many_entries(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="entries"):
            extract(tmp_path, zip_bytes(REFERENCE), max_entries=5)

    def test_refuses_too_many_bytes(self, tmp_path):
        bomb = zip_bytes({"ref/a/x.png": b"\0" * 200_000, "ref/b/y.png": b"\0" * 10})
        assert len(bomb) < 5_000
        with pytest.raises(ArchiveRejected, match="bytes"):
            extract(tmp_path, bomb, max_bytes=100_000)

    def test_refuses_single_class(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="at least two"):
            extract(tmp_path, zip_bytes({"cat/1.png": b"x", "cat/2.png": b"y"}))

    def test_refuses_non_archive(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="neither a zip nor a tar"):
            extract(tmp_path, b"definitely not an archive")

    def test_skips_os_junk(self, tmp_path):
        folder, _ = extract(
            tmp_path, zip_bytes(REFERENCE | {"__MACOSX/ref/._x": b"", "ref/.DS_Store": b""})
        )
        assert folder.classes == ["cat", "dog"]
