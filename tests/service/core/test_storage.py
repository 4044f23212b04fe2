"""Plain local files: atomic writes (the admin token and the demo cache) and file digests. The
object store itself has its contract tests in tests/storage/."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from flipwatch.service.core import storage


class TestWriteAtomic:
    def test_writes_the_bytes_and_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        path = tmp_path / "deep" / "folder" / "token.txt"
        assert storage.write_atomic(path, b"secret\n") == path
        assert path.read_bytes() == b"secret\n"
        assert sorted(p.name for p in path.parent.iterdir()) == ["token.txt"]

    def test_replaces_an_existing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "spec.json"
        path.write_bytes(b"old")
        storage.write_atomic(path, b"new")
        assert path.read_bytes() == b"new"

    @pytest.mark.parametrize(("mode", "expected"), [(None, 0o600), (0o600, 0o600), (0o644, 0o644)])
    def test_file_is_private_unless_a_mode_is_given(self, tmp_path: Path, mode, expected) -> None:
        path = storage.write_atomic(tmp_path / "f", b"x", mode=mode)
        assert stat.S_IMODE(path.stat().st_mode) == expected

    def test_a_failed_write_keeps_the_old_file_and_cleans_up(self, tmp_path: Path) -> None:
        path = tmp_path / "meta.json"
        path.write_bytes(b"old")
        with pytest.raises(TypeError):
            storage.write_atomic(path, "not bytes")  # type: ignore[arg-type]
        assert path.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_sha256_file_equals_hashlib_over_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read chunk
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    assert storage.sha256_file(path) == hashlib.sha256(data).hexdigest()
