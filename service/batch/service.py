"""Batch ingest: validate every file, then store all of them or none.

Validation never writes: every file is checked (format whitelist, size, pixel count before decoding,
full decode) and all reasons are collected into one `BatchRejected`. Only a fully valid batch is
written (content-addressed files) and inserted (batch and image rows, window bookkeeping, jobs for
windows it closes), in the caller's transaction. The answer (`BatchAccepted`) is stored with the
batch, so a retried Idempotency-Key gets the first answer back unchanged.
"""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.batch.schemas import BatchAccepted
from flipwatch.service.core import staging, storage
from flipwatch.service.core.errors import (
    BatchRejected,
    BatchTooLarge,
    EmptyBatch,
    IdempotencyConflict,
)
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import ApiKey, Batch, Image, Job, Stream
from flipwatch.service.job.schemas import JobLink, job_url
from flipwatch.service.stream.schemas import WindowFill
from flipwatch.service.stream.service import close_window, get_stream, lock_stream

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class Upload:
    """One received file: client-side name and bytes (`over_limit`: cut at the per-file cap)."""

    name: str
    data: bytes
    over_limit: bool = False


@dataclass(frozen=True)
class CheckedImage:
    name: str
    data: bytes
    sha256: str
    format: str
    width: int
    height: int


@dataclass
class IngestResult:
    """What `ingest_batch` did: the answer to send, the jobs to dispatch after commit, and whether
    it is the replay of an earlier request (nothing stored, no jobs)."""

    batch: Batch
    accepted: BatchAccepted
    jobs: list[Job] = field(default_factory=list)
    replayed: bool = False


def read_header(data: bytes, *, max_pixels: int) -> tuple[str, int, int, int]:
    """(format, width, height, frames) from the header alone: cheap, nothing is decoded.

    ValueError says why the file is refused: not a whitelisted format, no pixels, or more pixels
    than `max_pixels` (a decompression bomb never allocates its frame buffer).
    """
    try:
        with PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            width, height = img.size
            frames = getattr(img, "n_frames", 1)
            image_format = img.format or ""
    except PILImage.DecompressionBombError as exc:
        raise ValueError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a supported image (allowed: {', '.join(ALLOWED_FORMATS)})") from exc
    except (OSError, SyntaxError, EOFError, MemoryError, struct.error) as exc:
        raise ValueError(f"image header is unreadable (truncated or corrupt): {exc}") from exc
    if image_format not in ALLOWED_FORMATS:
        raise ValueError(
            f"format {image_format or 'unknown'} is not one of {', '.join(ALLOWED_FORMATS)}"
        )
    if width < 1 or height < 1:
        raise ValueError("image has no pixels")
    if width * height * frames > max_pixels:
        raise ValueError(
            f"{width}x{height} pixels{f' x {frames} frames' if frames > 1 else ''} is over "
            f"the limit of {max_pixels} pixels (decompression-bomb guard)"
        )
    return image_format, width, height, frames


def decode_fully(data: bytes) -> None:
    """Decode every pixel (the expensive part); ValueError if the file is truncated or corrupt."""
    try:
        with PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            img.load()
    except PILImage.DecompressionBombError as exc:
        raise ValueError(f"decompression bomb refused: {exc}") from exc
    except (OSError, SyntaxError, EOFError, MemoryError, ValueError, struct.error) as exc:
        raise ValueError(f"image does not decode (truncated or corrupt): {exc}") from exc


def check_image(data: bytes, *, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) of a whitelisted image that decodes fully; ValueError says why not.

    The header is checked before decoding (`read_header`); truncated files fail in the decode
    (LOAD_TRUNCATED_IMAGES is False).
    """
    image_format, width, height, _ = read_header(data, max_pixels=max_pixels)
    decode_fully(data)
    return image_format, width, height


def name_problem(name: str) -> str | None:
    """Why a client file name cannot be stored as text, or None (NUL and control characters)."""
    if "\x00" in name:
        return "file name contains a NUL byte"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "file name contains control characters"
    return None


Decoder = Callable[[Sequence[bytes]], list[str | None]]
"""Decodes files fully and says why each one failed (None: it decoded); e.g. a process pool."""


def _decode_here(files: Sequence[bytes]) -> list[str | None]:
    reasons: list[str | None] = []
    for data in files:
        try:
            decode_fully(data)
            reasons.append(None)
        except ValueError as exc:
            reasons.append(str(exc))
    return reasons


def validate_batch(
    uploads: list[Upload], settings: Settings, decode: Decoder | None = None
) -> list[CheckedImage]:
    """Check the whole batch; raise one error listing every failing file, or return all.

    Cheap checks first (counts, sizes, names, image headers), then the decode budget (the
    pixels the batch would decode, `max_batch_pixels`), and only then the full decodes, so the
    CPU one request can cost is bounded before any pixel is decoded.
    """
    if not uploads:
        raise EmptyBatch(
            "the batch has no images; send one or more files in the multipart field 'images'",
            errors=[{"file": None, "index": None, "reason": "no files in field 'images'"}],
        )
    if len(uploads) > settings.max_batch_files:
        raise BatchTooLarge(
            f"{len(uploads)} files is over the limit of {settings.max_batch_files} per batch; "
            "split the batch",
            errors=[
                {"file": u.name, "index": i, "reason": "over the per-batch file count limit"}
                for i, u in enumerate(uploads)
                if i >= settings.max_batch_files
            ],
        )
    running, over = 0, []
    for i, upload in enumerate(uploads):
        running += len(upload.data)
        if running > settings.max_batch_bytes:
            over.append(
                {"file": upload.name, "index": i, "reason": "over the per-batch byte limit"}
            )
    if over:
        raise BatchTooLarge(
            f"the batch is over the limit of {settings.max_batch_bytes} bytes from file "
            f"{over[0]['file']!r} on; split the batch",
            errors=over,
        )

    headers: dict[int, tuple[str, int, int, int]] = {}
    errors: list[dict[str, Any]] = []
    for i, upload in enumerate(uploads):
        reason = name_problem(upload.name)
        if reason is None and (upload.over_limit or len(upload.data) > settings.max_file_bytes):
            reason = f"file is over the limit of {settings.max_file_bytes} bytes"
        if reason is None and not upload.data:
            reason = "file is empty"
        if reason is None:
            try:
                headers[i] = read_header(upload.data, max_pixels=settings.max_image_pixels)
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            errors.append({"file": _printable(upload.name), "index": i, "reason": reason})
    _check_decode_budget(uploads, headers, settings.max_batch_pixels)

    checked: list[CheckedImage] = []
    reasons = (decode or _decode_here)([uploads[i].data for i in headers])
    for (i, (image_format, width, height, _)), reason in zip(headers.items(), reasons, strict=True):
        upload = uploads[i]
        if reason is not None:
            errors.append({"file": _printable(upload.name), "index": i, "reason": reason})
            continue
        checked.append(
            CheckedImage(
                name=upload.name,
                data=upload.data,
                sha256=storage.sha256_hex(upload.data),
                format=image_format,
                width=width,
                height=height,
            )
        )
    if errors:
        errors.sort(key=lambda e: e["index"])
        names = ", ".join(repr(e["file"]) for e in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise BatchRejected(
            f"{len(errors)} of {len(uploads)} files rejected ({names}{more}); nothing was stored",
            errors=errors,
        )
    return checked


def _check_decode_budget(
    uploads: list[Upload], headers: dict[int, tuple[str, int, int, int]], budget: int
) -> None:
    total, over = 0, []
    for i, (_, width, height, frames) in headers.items():
        total += width * height * frames
        if total > budget:
            over.append(
                {
                    "file": _printable(uploads[i].name),
                    "index": i,
                    "reason": "over the per-batch decode budget",
                }
            )
    if over:
        raise BatchTooLarge(
            f"the batch's images hold {total} pixels, over the decode budget of {budget} pixels "
            f"per batch from file {over[0]['file']!r} on; split the batch",
            errors=over,
        )


def _printable(name: str) -> str:
    """A file name safe to echo in a problem body (control characters escaped)."""
    return name.encode("unicode_escape").decode("ascii") if name_problem(name) else name


def request_fingerprint(stream_id: uuid.UUID, uploads: list[Upload]) -> str:
    """What an Idempotency-Key promises: same stream, same file names, same bytes, same order."""
    digest = hashlib.sha256(str(stream_id).encode())
    for upload in uploads:
        content = hashlib.sha256(upload.data).hexdigest()
        flag = b"+" if upload.over_limit else b"="
        digest.update(b"\0" + upload.name.encode() + b"\0" + content.encode() + flag)
    return digest.hexdigest()


def find_replay(
    session: Session, *, api_key: ApiKey, idempotency_key: str | None, fingerprint: str
) -> Batch | None:
    """The batch first stored under this key, or None; the same key with other content is a 409."""
    if idempotency_key is None:
        return None
    previous = session.scalar(
        select(Batch).where(
            Batch.api_key_id == api_key.id, Batch.idempotency_key == idempotency_key
        )
    )
    if previous is not None and previous.request_sha256 != fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} was used for batch {previous.id} with other "
            "content or another stream; use a new key for a new batch"
        )
    return previous


def ingest_batch(
    session: Session,
    *,
    settings: Settings,
    stream_id: uuid.UUID,
    api_key: ApiKey,
    uploads: list[Upload],
    idempotency_key: str | None,
    decode: Decoder | None = None,
) -> IngestResult:
    """Validate, store and record one batch; a retried Idempotency-Key returns the first batch.

    Order matters: the replay check and validation run before the stream row is locked, so a slow
    decode does not block other batches; the replay check repeats under the lock, which serialises
    concurrent retries of one key.
    """
    stream = get_stream(session, stream_id)
    fingerprint = request_fingerprint(stream.id, uploads)
    replay = dict(api_key=api_key, idempotency_key=idempotency_key, fingerprint=fingerprint)
    previous = find_replay(session, **replay)
    if previous is not None:
        return _replayed(previous)
    checked = validate_batch(uploads, settings, decode)

    stream = lock_stream(session, stream.id)
    previous = find_replay(session, **replay)
    if previous is not None:
        return _replayed(previous)

    store = storage.open_store(settings)
    batch = Batch(
        id=uuid.uuid4(),
        stream_id=stream.id,
        api_key_id=api_key.id,
        idempotency_key=idempotency_key,
        request_sha256=fingerprint,
        image_count=len(checked),
        response={},
    )
    session.add(batch)
    jobs: list[Job] = []
    notices: list[str] = []
    rows: list[Image] = []
    for image in checked:
        # Staged until the commit (moved into place then), deleted on rollback: a refused or
        # interrupted batch leaves no object behind.
        key = staging.stage_image(
            session,
            store=store,
            batch_id=batch.id,
            digest=image.sha256,
            image_format=image.format,
            data=image.data,
        )
        rows.append(
            Image(
                sha256=image.sha256,
                stream_id=stream.id,
                batch_id=batch.id,
                window_index=stream.current_window_index,
                position=stream.images_total,
                path=key,
                filename=image.name[:255],
                width=image.width,
                height=image.height,
                format=image.format,
                size_bytes=len(image.data),
            )
        )
        stream.images_total += 1
        stream.window_fill += 1
        if stream.window_fill >= stream.window_size:
            closed = close_window(session, stream, auto=True, settings=settings)
            if closed.job is not None:
                jobs.append(closed.job)
            if closed.notice and closed.notice not in notices:
                notices.append(closed.notice)
    session.add_all(rows)
    session.flush()
    accepted = _accepted(batch, stream, jobs, notices)
    batch.response = accepted.model_dump(mode="json")
    session.flush()
    return IngestResult(batch=batch, accepted=accepted, jobs=jobs)


def _accepted(batch: Batch, stream: Stream, jobs: list[Job], notices: list[str]) -> BatchAccepted:
    return BatchAccepted(
        batch_id=batch.id,
        stream_id=stream.id,
        image_count=batch.image_count,
        images_total=stream.images_total,
        window=WindowFill(
            index=stream.current_window_index, fill=stream.window_fill, size=stream.window_size
        ),
        job_url=job_url(jobs[-1].id) if jobs else None,
        jobs=[JobLink(id=j.id, window_index=j.window_index, url=job_url(j.id)) for j in jobs],
        notices=notices,
    )


def _replayed(batch: Batch) -> IngestResult:
    """The first answer for this Idempotency-Key, as stored."""
    return IngestResult(
        batch=batch, accepted=BatchAccepted.model_validate(batch.response), replayed=True
    )
