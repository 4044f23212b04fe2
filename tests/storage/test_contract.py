"""The object store's contract, the same on both backends (local directory, real S3 server):
put/get/exists/delete/list/move, idempotent content-addressed writes, and partial-write safety."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from flipwatch.service.core import storage
from flipwatch.service.core.errors import StorageUnavailable
from flipwatch.service.core.storage import ObjectStore

DIGEST = "ab" * 32


class FailingReader(io.RawIOBase):
    """A source that yields `good` bytes, then fails like a dropped client connection."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._good.read(len(buffer))
        if not chunk:
            raise ConnectionResetError("client went away mid-upload")
        buffer[: len(chunk)] = chunk
        return len(chunk)


class TestPutGet:
    def test_get_returns_the_bytes_put(self, store: ObjectStore) -> None:
        store.put("images/ab/ab/x.png", b"\x89PNG bytes")
        assert store.get("images/ab/ab/x.png") == b"\x89PNG bytes"

    def test_put_replaces_an_existing_object(self, store: ObjectStore) -> None:
        store.put("a/b", b"old")
        store.put("a/b", b"new")
        assert store.get("a/b") == b"new"

    def test_put_file_stores_a_path_and_an_open_file(
        self, store: ObjectStore, tmp_path: Path
    ) -> None:
        source = tmp_path / "w.pt"
        source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, over one copy chunk
        store.put_file("models/w.pt", source)
        store.put_file("models/v.pt", io.BytesIO(b"from a stream"))
        assert store.get("models/w.pt") == source.read_bytes()
        assert store.get("models/v.pt") == b"from a stream"

    def test_get_of_a_missing_key_raises_file_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(FileNotFoundError, match="images/none.png"):
            store.get("images/none.png")

    def test_download_writes_a_local_copy(self, store: ObjectStore, tmp_path: Path) -> None:
        store.put("models/m.pt", b"weights")
        dest = tmp_path / "cache" / "m.pt"
        assert store.download("models/m.pt", dest) == dest
        assert dest.read_bytes() == b"weights"
        assert sorted(p.name for p in dest.parent.iterdir()) == ["m.pt"]

    def test_download_of_a_missing_key_leaves_no_file(
        self, store: ObjectStore, tmp_path: Path
    ) -> None:
        with pytest.raises(FileNotFoundError):
            store.download("models/gone.pt", tmp_path / "cache" / "gone.pt")
        assert list((tmp_path / "cache").glob("*")) == []


class TestExistsDelete:
    def test_exists_follows_put_and_delete(self, store: ObjectStore) -> None:
        assert not store.exists("k/1")
        store.put("k/1", b"x")
        assert store.exists("k/1")
        store.delete("k/1")
        assert not store.exists("k/1")

    def test_delete_of_a_missing_key_is_a_no_op(self, store: ObjectStore) -> None:
        store.delete("k/never")
        assert not store.exists("k/never")

    def test_delete_prefix_removes_only_that_folder(self, store: ObjectStore) -> None:
        for key in ("calibrations/1/a/x.png", "calibrations/1/b/y.png", "calibrations/10/z.png"):
            store.put(key, b"p")
        assert storage.delete_prefix(store, "calibrations/1/") == 2
        assert [i.key for i in store.list("calibrations/")] == ["calibrations/10/z.png"]


class TestMove:
    def test_move_renames_and_replaces_the_target(self, store: ObjectStore) -> None:
        store.put("incoming/b/x.png", b"new")
        store.put("images/x.png", b"old copy")
        store.move("incoming/b/x.png", "images/x.png")
        assert store.get("images/x.png") == b"new"
        assert not store.exists("incoming/b/x.png")

    def test_move_of_a_missing_key_raises_file_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(FileNotFoundError):
            store.move("incoming/b/none.png", "images/none.png")
        assert not store.exists("images/none.png")


class TestList:
    def test_lists_keys_sizes_and_times_under_a_prefix(self, store: ObjectStore) -> None:
        before = time.time() - 5  # second-granular server clocks
        store.put("images/aa/bb/1.png", b"one")
        store.put("images/cc/dd/2.png", b"twotwo")
        store.put("models/3.pt", b"w")

        listed = sorted(store.list("images/"))

        assert [(i.key, i.size) for i in listed] == [
            ("images/aa/bb/1.png", 3),
            ("images/cc/dd/2.png", 6),
        ]
        assert all(before <= i.modified <= time.time() + 5 for i in listed)
        assert sorted(i.key for i in store.list()) == [
            "images/aa/bb/1.png",
            "images/cc/dd/2.png",
            "models/3.pt",
        ]

    def test_lists_in_key_order_and_after_a_given_key(self, store: ObjectStore) -> None:
        """S3's order (UTF-8 bytes of the whole key), so a listing can resume after its last key:
        'a/b.png' < 'a/b/c.png' < 'a/b0.png' although the local store keeps 'a/b/' as a folder."""
        keys = ["a/b.png", "a/b/c.png", "a/b/d.png", "a/b0.png", "a/c/d/e.png", "b.png"]
        for key in reversed(keys):
            store.put(key, b"x")

        assert [i.key for i in store.list()] == keys
        assert [i.key for i in store.list("a/", start_after="a/b/c.png")] == keys[2:5]
        assert [i.key for i in store.list("a/", start_after="a/b.png")] == keys[1:5]
        assert [i.key for i in store.list("", start_after="a/b0.png")] == keys[4:]
        assert [i.key for i in store.list("", start_after="a/a")] == keys
        assert list(store.list("", start_after="b.png")) == []

    def test_an_empty_or_unknown_prefix_lists_nothing(self, store: ObjectStore) -> None:
        assert list(store.list("trash/")) == []

    def test_a_prefix_must_be_a_folder(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="must be '' or a key followed by '/'"):
            list(store.list("images"))


class TestContentAddressed:
    def test_put_content_writes_a_key_once(self, store: ObjectStore) -> None:
        key = storage.image_key(DIGEST, "PNG")
        assert storage.put_content(store, key, b"first") is True
        assert storage.put_content(store, key, b"second") is False  # same name, same content
        assert store.get(key) == b"first"
        assert key == f"images/ab/ab/{DIGEST}.png"

    def test_keys_of_each_kind(self) -> None:
        assert storage.image_key(DIGEST, "JPEG") == f"images/ab/ab/{DIGEST}.jpg"
        assert storage.weights_key(DIGEST) == f"models/{DIGEST}.pt"
        assert storage.reference_prefix("c1") == "calibrations/c1/"


class TestPartialWrites:
    def test_a_failed_upload_leaves_no_object(self, store: ObjectStore) -> None:
        with pytest.raises(ConnectionResetError):
            store.put_file("models/partial.pt", FailingReader(b"x" * 300_000))
        assert not store.exists("models/partial.pt")
        assert list(store.list()) == []

    def test_a_failed_replacement_keeps_the_old_object_whole(self, store: ObjectStore) -> None:
        store.put("models/w.pt", b"complete weights")
        with pytest.raises(ConnectionResetError):
            store.put_file("models/w.pt", FailingReader(b"y" * 300_000))
        assert store.get("models/w.pt") == b"complete weights"
        assert [i.key for i in store.list()] == ["models/w.pt"]

    def test_leftovers_of_interrupted_writes_are_removed_by_abort_incomplete(
        self, store: ObjectStore
    ) -> None:
        with pytest.raises(ConnectionResetError):
            store.put_file("models/partial.pt", FailingReader(b"x" * 300_000))
        store.abort_incomplete(older_than_seconds=0)
        assert store.abort_incomplete(older_than_seconds=0) == 0  # nothing left to clean
        assert list(store.list()) == []


class TestKeys:
    @pytest.mark.parametrize(
        "key", ["/etc/passwd", "../x", "a/../../b", "a//b", "", ".tmp/x", "a\\b", "a/./b"]
    )
    def test_refuses_keys_that_could_escape_the_store(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(ValueError, match="is not a storage key"):
            store.put(key, b"x")

    def test_accepts_class_folder_names_with_spaces_and_unicode(self, store: ObjectStore) -> None:
        store.put("calibrations/c/golden retriever/Bild ä 1.png", b"p")
        assert store.get("calibrations/c/golden retriever/Bild ä 1.png") == b"p"


def test_local_backend_keeps_the_data_dir_layout(tmp_path: Path) -> None:
    store = storage.LocalStore(tmp_path)
    store.put(storage.image_key(DIGEST, "PNG"), b"png")
    assert (tmp_path / "images" / "ab" / "ab" / f"{DIGEST}.png").read_bytes() == b"png"
    assert store.local_path("images/x.png") == tmp_path.resolve() / "images" / "x.png"


def test_an_unreachable_s3_server_raises_storage_unavailable() -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = storage.S3Store(
        storage.S3Config(
            bucket="flipwatch",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="FWUNREACHABLE",
            secret_access_key="x" * 40,
            max_attempts=1,
        )
    )
    for call in (
        lambda: store.put("a/b", b"x"),
        lambda: store.get("a/b"),
        lambda: store.exists("a/b"),
        lambda: list(store.list("a/")),
    ):
        with pytest.raises(StorageUnavailable, match="cannot be reached") as raised:
            call()
        assert raised.value.status == 503 and raised.value.headers["Retry-After"] == "5"
