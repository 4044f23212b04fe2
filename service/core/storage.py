"""Content-addressed object storage: one interface, a local directory or an S3-compatible bucket.

Rows store *keys*, relative and content-addressed, never paths: images at
`images/ab/cd/<sha256>.<ext>`, weights at `models/<sha256>.pt`, a calibration's reference set under
`calibrations/<id>/`. `FLIPWATCH_STORAGE_BACKEND` picks where keys live:

- `local` (the embedded default): files under `data_dir`, so a key is `data_dir/<key>`, the layout
  of earlier versions. Writes go to a temporary file in `data_dir/.tmp/`, fsynced and renamed into
  place, so a reader never sees a partial object.
- `s3`: objects in `FLIPWATCH_STORAGE_BUCKET` (under an optional prefix) through boto3, for API
  and workers on different hosts. A PUT is atomic on S3 (the object appears whole or not at all),
  and a failed multipart upload is aborted.

Same name means same content, so `put_content` skips a key that exists and two writers of the same
bytes produce the same object. `write_atomic` stays for plain local files (admin key, demo cache).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from flipwatch.service.core.errors import StorageUnavailable

if TYPE_CHECKING:
    from flipwatch.service.core.settings import Settings

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
TEMP_DIR = ".tmp"  # local backend: in-progress writes, never a key
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_KEY_BYTES = 1024  # S3's limit
CHUNK = 1 << 20
PROBE_TIMEOUT_SECONDS = 2.0  # readiness: one S3 call, this long to connect and to answer


class ObjectInfo(NamedTuple):
    key: str
    size: int
    modified: float  # seconds since the epoch


class ObjectStore(Protocol):
    """What API and workers need from a store. A missing key raises FileNotFoundError (a job
    retries it like any I/O error); `delete` of a missing key is a no-op."""

    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, source: Path | IO[bytes]) -> None:
        """Store a file's bytes (a path, or an open binary file read to its end)."""
        ...

    def get(self, key: str) -> bytes: ...

    def download(self, key: str, dest: Path) -> Path:
        """Copy an object to a local file, atomically (a reader sees all of it or nothing)."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def move(self, src: str, dst: str) -> None:
        """Rename an object, replacing `dst`; FileNotFoundError when `src` is missing."""
        ...

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with `prefix` (a folder: '' or ending in '/'),
        in key order (S3's: by UTF-8 bytes), only keys after `start_after` when given; so a
        long listing can stop anywhere and resume after the last key it saw."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's own file when the store is a local directory (read without a copy)."""
        ...

    def abort_incomplete(self, older_than_seconds: float) -> int:
        """Remove what interrupted writes left (temporary files, multipart uploads); a count."""
        ...

    def probe(self) -> None:
        """Raise unless the store can take requests now: cheap, and bounded by
        PROBE_TIMEOUT_SECONDS on S3 whatever the store's own timeouts (for /readyz)."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (weights, cached demo files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def image_key(digest: str, image_format: str) -> str:
    return f"images/{digest[:2]}/{digest[2:4]}/{digest}.{EXTENSIONS[image_format]}"


def weights_key(digest: str) -> str:
    return f"models/{digest}.pt"


def reference_prefix(calibration_id: object) -> str:
    return f"calibrations/{calibration_id}/"


def is_key(key: str) -> bool:
    """Relative, '/'-separated, no empty, '.' or '..' segment, no control characters or
    backslashes, not starting with '.' (the local store's own files), at most 1024 bytes."""
    return (
        bool(key)
        and not key.startswith((".", "/"))
        and not _BAD_CHARS.search(key)
        and len(key.encode()) <= MAX_KEY_BYTES
        and all(part not in ("", ".", "..") for part in key.split("/"))
    )


def check_key(key: str) -> str:
    """`key`, or ValueError when it could escape the store or is no valid object name."""
    if not is_key(key):
        raise ValueError(f"{key!r} is not a storage key (relative, '/'-separated, no '..')")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must be '' or a key followed by '/'")
        check_key(prefix[:-1])
    return prefix


def put_content(store: ObjectStore, key: str, data: bytes) -> bool:
    """Write content-addressed `data` unless `key` exists (same name, same content); True when
    this call wrote it."""
    if store.exists(key):
        return False
    store.put(key, data)
    return True


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    """Delete every object under `prefix`; how many went."""
    keys = [info.key for info in store.list(prefix)]
    for key in keys:
        store.delete(key)
    return len(keys)


def put_tree(store: ObjectStore, folder: Path, prefix: str, *, threads: int = 8) -> int:
    """Upload every file under `folder` to `prefix` + its relative path; how many."""
    _check_prefix(prefix)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    keys = [prefix + p.relative_to(folder).as_posix() for p in files]
    for key in keys:
        check_key(key)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(store.put_file, keys, files))
    return len(files)


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, fsynced and renamed
    into place, so a reader sees the old file or the whole new one, never a part.

    The temporary file is created private (0600); `mode` sets the final permissions (default:
    left private). Used for the local admin token and the demo's cached files.
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


def _copy_into_temp(source: Path | IO[bytes], tmp_dir: Path, dest: Path) -> None:
    """Copy `source` to a fsynced temporary file in `tmp_dir`, then rename it to `dest`."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=f"{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, Path):
                with open(source, "rb") as handle:
                    shutil.copyfileobj(handle, out, CHUNK)
            else:
                shutil.copyfileobj(source, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore:
    """Keys as files under `root` (the data directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / TEMP_DIR

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        _copy_into_temp(io.BytesIO(data), self._tmp, self._path(key))

    def put_file(self, key: str, source: Path | IO[bytes]) -> None:
        _copy_into_temp(source, self._tmp, self._path(key))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise FileNotFoundError(f"object {key} is not in {self!r}") from exc

    def download(self, key: str, dest: Path) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"object {key} is not in {self!r}")
        _copy_into_temp(path, dest.parent, dest)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def move(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"object {src} is not in {self!r}") from exc
        self._prune(source.parent)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        base = self.root / _check_prefix(prefix) if prefix else self.root
        if base.is_dir():
            yield from self._walk(base, prefix, start_after)

    def _walk(self, folder: Path, folder_key: str, start_after: str) -> Iterator[ObjectInfo]:
        """The objects under `folder` (keys starting with `folder_key`) in key order: a
        subfolder sorts as its name plus '/', so 'b.png' < 'b/...' < 'b0.png' as on S3.
        Subfolders whose every key sorts before `start_after` are not entered."""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while listing
        named = []
        for entry in entries:
            if entry.name.startswith(".") and (folder == self.root or not entry.is_dir()):
                continue  # the store's own files (.tmp/), old write_atomic temporaries
            if entry.is_dir():
                if not entry.is_symlink():
                    named.append((entry.name + "/", entry))
            else:
                named.append((entry.name, entry))
        named.sort(key=lambda pair: pair[0])
        for name, entry in named:
            key = folder_key + name
            if name.endswith("/"):
                if key > start_after or start_after.startswith(key):
                    yield from self._walk(Path(entry.path), key, start_after)
                continue
            if key <= start_after or not is_key(key):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue  # removed while listing
            yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def abort_incomplete(self, older_than_seconds: float) -> int:
        removed = 0
        if not self._tmp.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        for path in self._tmp.iterdir():
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def probe(self) -> None:
        """The data dir exists and takes a new file (created and removed in `.tmp/`)."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a directory")
        self._tmp.mkdir(exist_ok=True)  # not the root: a vanished data dir stays an error
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)

    def _prune(self, folder: Path) -> None:
        """Remove folders emptied by a delete or move (up to, never including, the root)."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty, or gone
            folder = folder.parent


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = "path"
    max_attempts: int = 5  # per call, the first included
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


class S3Store:
    """Keys as objects in one bucket (under `prefix`), through one thread-safe boto3 client.

    Checksums are sent only where S3 requires them: newer boto3 defaults add CRC headers that
    some S3-compatible servers refuse; the Content-MD5 of every single-part PUT still lets the
    server reject a body damaged in transit. Attempts and timeouts come from the settings
    (`FLIPWATCH_STORAGE_MAX_ATTEMPTS`, `..._CONNECT_TIMEOUT_SECONDS`, `..._READ_TIMEOUT_SECONDS`).
    """

    def __init__(self, config: S3Config) -> None:
        from boto3.s3.transfer import TransferConfig

        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self._client: Any = self._make_client(
            attempts=config.max_attempts,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            pool=32,
        )
        self._probe_client: Any = None  # made on the first probe
        self._transfer = TransferConfig(multipart_threshold=64 * 1024 * 1024, use_threads=False)

    def _make_client(
        self, *, attempts: int, connect_timeout: float, read_timeout: float, pool: int
    ) -> Any:
        import boto3
        from botocore.config import Config

        config = self.config
        return boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(
                s3={"addressing_style": config.addressing_style},
                # total_max_attempts counts the first call (boto3's `max_attempts` does not).
                retries={"total_max_attempts": attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=pool,
            ),
        )

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _missing(self, exc: Exception) -> bool:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Connection failures, timeouts and 5xx answers (after boto3's retries) become
        StorageUnavailable: a 503 with Retry-After in the API, a retried job in a worker."""
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status >= 500:
                raise StorageUnavailable(
                    f"object storage {self!r} answered {status}; retry later"
                ) from exc
            raise
        except (BotoConnectionError, HTTPClientError) as exc:
            raise StorageUnavailable(
                f"object storage {self!r} cannot be reached ({type(exc).__name__}); retry later"
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        with self._reachable():
            self._client.put_object(
                Bucket=self.bucket, Key=self._name(key), Body=data, ContentMD5=md5
            )

    def put_file(self, key: str, source: Path | IO[bytes]) -> None:
        name = self._name(key)
        with self._reachable():
            if isinstance(source, Path):
                self._client.upload_file(str(source), self.bucket, name, Config=self._transfer)
            else:
                self._client.upload_fileobj(source, self.bucket, name, Config=self._transfer)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        with self._reachable():
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
            except ClientError as exc:
                if self._missing(exc):
                    raise FileNotFoundError(f"object {key} is not in {self!r}") from exc
                raise
            with response["Body"] as body:
                return body.read()

    def download(self, key: str, dest: Path) -> Path:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, self._reachable():
                try:
                    self._client.download_fileobj(
                        self.bucket, self._name(key), out, Config=self._transfer
                    )
                except ClientError as exc:
                    if self._missing(exc):
                        raise FileNotFoundError(f"object {key} is not in {self!r}") from exc
                    raise
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._reachable():
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._name(key))
            except ClientError as exc:
                if self._missing(exc):
                    return False
                raise
        return True

    def delete(self, key: str) -> None:
        with self._reachable():
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def move(self, src: str, dst: str) -> None:
        """Server-side copy, then delete: the bytes never pass through this process."""
        from botocore.exceptions import ClientError

        with self._reachable():
            try:
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=self._name(dst),
                    CopySource={"Bucket": self.bucket, "Key": self._name(src)},
                )
            except ClientError as exc:
                if self._missing(exc):
                    raise FileNotFoundError(f"object {src} is not in {self!r}") from exc
                raise
        self.delete(src)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        _check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        after = {"StartAfter": self.prefix + start_after} if start_after else {}
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, **after))
        while True:
            with self._reachable():
                page = next(pages, None)
            if page is None:
                return
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())

    def local_path(self, key: str) -> Path | None:
        return None

    def probe(self) -> None:
        """HEAD the bucket once (no retries) through a client of its own whose timeouts are at
        most PROBE_TIMEOUT_SECONDS: a hung endpoint costs readiness about that, not the
        store's attempts x read timeout. Also fails on a missing bucket or refused key."""
        if self._probe_client is None:  # two threads may both make one: harmless
            self._probe_client = self._make_client(
                attempts=1,
                connect_timeout=min(self.config.connect_timeout, PROBE_TIMEOUT_SECONDS),
                read_timeout=min(self.config.read_timeout, PROBE_TIMEOUT_SECONDS),
                pool=2,
            )
        self._probe_client.head_bucket(Bucket=self.bucket)

    def abort_incomplete(self, older_than_seconds: float) -> int:
        """Abort multipart uploads started before the cutoff (their parts cost storage)."""
        from botocore.exceptions import ClientError

        cutoff = time.time() - older_than_seconds
        aborted = 0
        try:
            with self._reachable():
                paginator = self._client.get_paginator("list_multipart_uploads")
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                    for upload in page.get("Uploads", ()):
                        if upload["Initiated"].timestamp() <= cutoff:
                            self._client.abort_multipart_upload(
                                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                            )
                            aborted += 1
        except ClientError as exc:
            # Servers without the call, or (rclone) answering NoSuchUpload when there is none.
            code = str(exc.response.get("Error", {}).get("Code"))
            if code not in ("NotImplemented", "NoSuchUpload"):
                raise
        return aborted


def open_store(settings: Settings) -> ObjectStore:
    """The store `settings` configure; one per configuration per process (an S3 client holds a
    connection pool, and creating one costs milliseconds)."""
    if settings.storage_backend == "local":
        return _local_store(Path(settings.data_dir).resolve())
    return _s3_store(
        S3Config(
            bucket=settings.storage_bucket or "",
            prefix=settings.storage_prefix,
            endpoint_url=settings.storage_endpoint_url,
            region=settings.storage_region,
            access_key_id=settings.storage_access_key_id,
            secret_access_key=settings.storage_secret_access_key,
            addressing_style=settings.storage_addressing_style,
            max_attempts=settings.storage_max_attempts,
            connect_timeout=settings.storage_connect_timeout_seconds,
            read_timeout=settings.storage_read_timeout_seconds,
        )
    )


@functools.lru_cache(maxsize=8)
def _local_store(root: Path) -> LocalStore:
    return LocalStore(root)


@functools.lru_cache(maxsize=8)
def _s3_store(config: S3Config) -> S3Store:
    return S3Store(config)


def total_size(infos: Iterable[ObjectInfo]) -> tuple[int, int]:
    """(objects, bytes)."""
    count = size = 0
    for info in infos:
        count += 1
        size += info.size
    return count, size
