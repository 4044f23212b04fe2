"""Batches: a pipeline POSTs unlabeled images to a stream; all are stored or none.

The multipart body is parsed here (not by FastAPI's File()) to accept both `images` and `images[]`
field names and to cap the number of parts before reading them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.types import Message

from flipwatch.service.api.deps import IngestKey, OutboxDep, SessionDep, SettingsDep, StreamID
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.batch.schemas import BatchAccepted
from flipwatch.service.batch.service import Upload, ingest_batch
from flipwatch.service.core.errors import BatchTooLarge, Invalid, MalformedRequest

router = APIRouter(prefix="/v1/streams", tags=["batches"])

FIELD_NAMES = ("images", "images[]")

MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "JPEG, PNG or WebP files (field name `images` or "
                            "`images[]`, repeated once per file).",
                        }
                    },
                    "required": ["images"],
                }
            }
        },
    }
}


@router.post(
    "/{stream_id}/batches",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422),
    openapi_extra=MULTIPART_BODY,
)
async def create_batch(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    outbox: OutboxDep,
    key: IngestKey,
    stream_id: StreamID,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="A retry with the same key returns the first answer, storing nothing.",
        ),
    ] = None,
) -> JSONResponse:
    """Validate every image, store them all (or none), and report the stream's window fill."""
    uploads = await _read_uploads(
        request, settings.max_batch_files, settings.max_file_bytes, settings.max_batch_bytes
    )
    result = await run_in_threadpool(
        ingest_batch,
        session,
        settings=settings,
        stream_id=stream_id,
        api_key=key,
        uploads=uploads,
        idempotency_key=idempotency_key,
        decode=pool.decode_all if (pool := request.app.state.decode_pool) else None,
    )
    outbox.add(*result.jobs)
    headers = {"Location": f"/v1/streams/{stream_id}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(result.accepted.model_dump(mode="json"), status_code=202, headers=headers)


class _BodyTail:
    """Keeps the last bytes of a request body as it streams past the multipart parser."""

    KEEP = 1024  # the closing delimiter, plus any short epilogue after it

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self.tail = b""

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.tail = (self.tail + message.get("body", b""))[-self.KEEP :]
        return message

    def closed_by(self, content_type: str) -> bool:
        """Whether the body held the closing delimiter `--<boundary>--` of its content type."""
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        return boundary is not None and b"--" + boundary + b"--" in self.tail


async def _read_uploads(
    request: Request, max_files: int, max_file_bytes: int, max_batch_bytes: int
) -> list[Upload]:
    """Read each file up to one byte past the per-file cap (enough to report it as oversize)."""
    length = request.headers.get("content-length")
    # Far past any valid batch: refuse before reading; near the limit, per-file reasons are given.
    if length and length.isdigit() and int(length) > 2 * max_batch_bytes + (1 << 20):
        raise BatchTooLarge(
            f"request body of {length} bytes is far over the batch limit of {max_batch_bytes} "
            "bytes; split the batch",
            errors=[{"file": None, "index": None, "reason": "request body too large"}],
        )
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise Invalid(
            "send the images as multipart/form-data, one part per file in field 'images'",
            errors=[{"file": None, "index": None, "reason": f"content type {content_type!r}"}],
        )
    tail = _BodyTail(request)
    try:
        # Parts past the limit are still read (to name them in the 413) up to twice the limit.
        form = await Request(request.scope, tail.receive).form(
            max_files=2 * max_files + 10, max_fields=100
        )
    except (MultiPartException, StarletteHTTPException) as exc:
        reason = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
        if "too many" not in reason.lower():
            raise MalformedRequest(f"cannot read the multipart body: {reason}") from exc
        raise BatchTooLarge(
            f"cannot read the multipart body: {reason} (at most {max_files} files per batch)",
            errors=[{"file": None, "index": None, "reason": reason}],
        ) from exc
    if not tail.closed_by(content_type):
        await form.close()
        # A body cut off in transit (with a matching Content-Length) would otherwise lose the
        # parts after the cut silently, and the parts before it would be stored.
        raise MalformedRequest(
            "the multipart body ends without its closing boundary (cut off in transit?); "
            "nothing was stored, send the whole batch again"
        )
    uploads: list[Upload] = []
    try:
        for field_name, value in form.multi_items():
            if field_name not in FIELD_NAMES:
                continue
            if not isinstance(value, UploadFile):
                raise Invalid(
                    f"field {field_name!r} holds text, not a file; attach files with -F "
                    "'images=@photo.jpg'",
                    errors=[{"file": None, "index": len(uploads), "reason": "not a file"}],
                )
            data = await value.read(max_file_bytes + 1)
            uploads.append(
                Upload(
                    name=value.filename or f"file-{len(uploads)}",
                    data=data,
                    over_limit=len(data) > max_file_bytes,
                )
            )
    finally:
        await form.close()
    return uploads
