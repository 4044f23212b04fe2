"""The Python client for the flipwatch HTTP API (httpx only: importable without torch).

A pipeline registers its model once, creates a stream, then posts batches of unlabeled images and
reads the estimates back::

    from flipwatch.client import FlipwatchClient

    with FlipwatchClient("http://flipwatch:8000", token=INGEST_TOKEN) as client:
        answer = client.post_batch(stream_id, sorted(Path("frames").glob("*.jpg")))
        for estimate in client.iter_estimates(stream_id):
            print(estimate.window_index, estimate.estimated_accuracy)

Every method returns a typed, frozen dataclass (its `raw` field keeps the JSON as received, so
fields a newer server adds are not lost). Every failure is a `FlipwatchError`: an API problem
(`status`, `code`, `detail`, per-item `errors`), a transport failure after the retries, a failed
job (`JobFailed`) or a wait past its timeout (`JobTimeout`).

Retries: idempotent requests (every GET, and batch POSTs, which always carry an `Idempotency-Key`)
are retried on transport errors and on 429, 502, 503 and 504, honouring `Retry-After`. A batch's
key is generated once per logical batch and reused for its retries, so a retry after a lost answer
replays the first answer and stores nothing twice. Other POSTs (register a model, start a
calibration, create a stream or an alert rule, request an estimate) are not idempotent: they are
retried only when the request cannot have been processed (the connection was never made, or 429 /
503), so a retry never registers a model twice.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import mimetypes
import os
import random
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import IO, Any, Generic, Literal, Protocol, TypeVar, Union, get_args, get_origin

import httpx

from flipwatch import __version__

log = logging.getLogger(__name__)

Id = str | uuid.UUID
JobState = Literal["queued", "running", "succeeded", "failed"]
AlertRuleKind = Literal["accuracy_below", "drop_below_reference", "embedding_above"]
EmbeddingKind = Literal["frechet", "silhouette", "centroid_shift", "class_distance"]
ImageInput = bytes | str | os.PathLike[str] | tuple[str, bytes]
"""One image of a batch: its bytes, a path to read, or (file name, bytes)."""
FileInput = bytes | str | os.PathLike[str]
"""A weights file or a reference archive: its bytes, or a path (streamed, re-opened per retry)."""

BATCH_SIZE = 100
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Statuses that say the request was not processed, so even a non-idempotent POST may be resent.
NOT_PROCESSED_STATUSES = frozenset({429, 503})

T = TypeVar("T")


# --- errors ------------------------------------------------------------------------------------


class FlipwatchError(Exception):
    """Every failure the client raises. For an API error, `status` is the HTTP status and `code`,
    `detail` and `errors` come from the problem+json body (`problem` is the whole body)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "error",
        title: str = "",
        errors: list[dict[str, Any]] | None = None,
        problem: dict[str, Any] | None = None,
        request: str = "",
    ) -> None:
        self.detail = detail
        self.status = status
        self.code = code
        self.title = title
        self.errors = errors or []
        self.problem = problem or {}
        self.request = request
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.request}: " if self.request else ""
        status = f"{self.status} " if self.status is not None else ""
        lines = [f"{where}{status}{self.code}: {self.detail}"]
        lines += [
            f"  {error.get('file') or error.get('field') or ''}: {error.get('reason')}"
            for error in self.errors[:10]
        ]
        return "\n".join(lines)


class IdempotencyConflict(FlipwatchError):
    """409: the Idempotency-Key was already used for a batch with other files or another stream;
    a new batch needs a new key (the client makes one per `post_batch` unless given one)."""


class TransportFailed(FlipwatchError):
    """No answer from the server (connection refused, reset or timed out) after the retries.

    For a non-idempotent request that was sent, the server may have processed it: look before
    sending it again."""


class JobFailed(FlipwatchError):
    """A job ended `failed`; `detail` is the job's error and `job` the job as last read."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(
            f"{job.kind} job {job.id} failed after {job.attempts} attempt(s): {job.error}",
            code="job-failed",
        )


class JobTimeout(FlipwatchError, TimeoutError):
    """A wait ran past its timeout; the job (as last read) is still queued or running."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        super().__init__(
            f"{job.kind} job {job.id} still {job.state} after {timeout:g} s "
            f"({job.progress.steps_done}/{job.progress.steps_total} steps)",
            code="job-timeout",
        )


# --- results -----------------------------------------------------------------------------------


def _convert(tp: Any, value: Any) -> Any:
    """JSON value -> the field's type: datetimes parsed, nested dataclasses built."""
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [arg for arg in get_args(tp) if arg is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if tp is datetime:
        return datetime.fromisoformat(value)
    if dataclasses.is_dataclass(tp):
        return _from_json(tp, value)  # type: ignore[arg-type]
    if origin is list and dataclasses.is_dataclass(get_args(tp)[0]):
        return [_convert(get_args(tp)[0], item) for item in value]
    return value


def _from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build a result dataclass from a JSON object; unknown keys stay in `raw` only."""
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        if item.name == "raw":
            values["raw"] = dict(data)
        elif item.name in data:
            values[item.name] = _convert(hints[item.name], data[item.name])
    return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        import typing

        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@dataclass(frozen=True)
class Model:
    """A registered model version (`GET /v1/models/{id}`)."""

    id: str
    name: str
    version: int
    spec: dict[str, Any]
    weights_sha256: str
    created_at: datetime
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Calibration:
    """A calibration of a model on a labeled reference set; `result` once it succeeded
    (coefficients, leave-one-family-out MAE per signal, the selected signal)."""

    id: str
    model_id: str
    job_id: str | None
    state: JobState
    reference_images: int
    reference_classes: list[str]
    reference_accuracy: float | None
    result: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None = None
    options: dict[str, Any] = field(default_factory=dict)
    job_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Stream:
    """A named source of images bound to a model; its open window fills with each batch."""

    id: str
    name: str
    model_id: str
    window_size: int
    steps: int
    auto_estimate: bool
    images_total: int
    current_window_index: int
    window_fill: int
    created_at: datetime
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class WindowFill:
    index: int
    fill: int
    size: int


@dataclass(frozen=True)
class JobLink:
    """An estimate job queued for a window that a batch closed."""

    id: str
    window_index: int | None
    url: str


@dataclass(frozen=True)
class BatchAccepted:
    """The 202 answer to a batch. `replayed`: the server had stored this batch already (a retry
    of the same Idempotency-Key) and stored nothing this time."""

    batch_id: str
    stream_id: str
    image_count: int
    images_total: int
    window: WindowFill
    job_url: str | None = None
    jobs: list[JobLink] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    replayed: bool = False
    idempotency_key: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class JobProgress:
    steps_done: int
    steps_total: int
    fraction: float


@dataclass(frozen=True)
class Job:
    """An estimate or calibration job (`GET /v1/jobs/{id}`); `estimate_id` once an estimate job
    succeeded, `error` once it failed."""

    id: str
    kind: Literal["estimate", "calibrate"]
    state: JobState
    attempts: int
    max_attempts: int
    progress: JobProgress
    model_id: str
    created_at: datetime
    stream_id: str | None = None
    window_index: int | None = None
    calibration_id: str | None = None
    error: str | None = None
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    estimate_id: str | None = None
    queue: str | None = None  # estimates.gpu, estimates.cpu or calibrations (newer servers)
    links: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Estimate:
    """The label-free accuracy estimate of one stream window; `result` is the estimator's full
    output (signals, checkpoints, baselines, embedding distances, steps, seconds, device)."""

    id: str
    stream_id: str
    window_index: int
    model_id: str
    model_version: int
    estimated_accuracy: float
    signal: str
    weighted_flips: float | None
    result: dict[str, Any]
    created_at: datetime
    job_id: str | None = None
    image_count: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def baselines(self) -> dict[str, float | None]:
        """The confidence baselines on the same window (ac, doc, atc, atc_ne, cot)."""
        return dict(self.result.get("baselines") or {})


@dataclass(frozen=True)
class WindowRealized:
    """A window touched by posted labels: its realized accuracy beside the label-free estimate
    (None below FLIPWATCH_REALIZED_MIN_LABELS labels)."""

    window_index: int
    estimate_id: str | None
    labeled_count: int
    estimated_accuracy: float | None
    realized_accuracy: float | None
    estimator_error: float | None


@dataclass(frozen=True)
class LabelsAccepted:
    images_labeled: int
    windows: list[WindowRealized]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class AlertRule:
    """A drift alert rule of a stream with its state (`ok` or `firing`) and streak."""

    id: str
    stream_id: str
    name: str
    kind: AlertRuleKind
    threshold: float
    windows: int
    state: Literal["ok", "firing"]
    streak: int
    created_at: datetime
    embedding_kind: EmbeddingKind | None = None
    webhook_url: str | None = None
    last_window_index: int | None = None
    last_value: float | None = None
    changed_at: datetime | None = None
    updated_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class AlertEvent:
    """One alert state change (`firing` or `resolved`) and the estimate that completed it."""

    id: str
    stream_id: str
    rule_id: str | None
    rule_name: str
    kind: AlertRuleKind
    state: Literal["firing", "resolved"]
    estimate_id: str
    window_index: int
    value: float
    threshold: float
    message: str
    created_at: datetime
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, newest first; pass `next_cursor` as `cursor` for the next page
    (None on the last page). The `iter_*` methods follow the cursors for you."""

    items: list[T]
    next_cursor: str | None


# --- retries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Delays double from `backoff` up to `backoff_max`, each
    shortened by up to `jitter` (a fraction) so that many clients do not retry in step. A server's
    `Retry-After` replaces the delay; one longer than `max_retry_after` ends the retries."""

    attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.2
    max_retry_after: float = 120.0

    def delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (1 for the first)."""
        base = min(self.backoff_max, self.backoff * 2 ** (retry - 1))
        return base * (1.0 - self.jitter * random.random())


class _Retry(Enum):
    IDEMPOTENT = "idempotent"  # GETs and batch POSTs (Idempotency-Key): any retryable failure
    UNPROCESSED = "unprocessed"  # other POSTs: only when the server surely did not process it


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) as seconds from now; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _never_sent(exc: httpx.TransportError) -> bool:
    """The connection was never made, so the server cannot have seen the request."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _problem_error(response: httpx.Response, request: str) -> FlipwatchError:
    """An error response as a FlipwatchError; problem+json fields when the body has them."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:500] or response.reason_phrase
        return FlipwatchError(
            text, status=response.status_code, code=f"http-{response.status_code}", request=request
        )
    code = str(body.get("code") or f"http-{response.status_code}")
    error_class = IdempotencyConflict if code == "idempotency-conflict" else FlipwatchError
    errors = body.get("errors")
    return error_class(
        str(body.get("detail") or body.get("title") or response.reason_phrase),
        status=response.status_code,
        code=code,
        title=str(body.get("title") or ""),
        errors=errors if isinstance(errors, list) else None,
        problem=body,
        request=request,
    )


# --- uploads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One multipart file: bytes in memory, or a path opened anew for each attempt."""

    form_field: str
    filename: str
    content: bytes | Path
    content_type: str


def _open_parts(parts: Sequence[_Part], stack: ExitStack) -> list[tuple[str, Any]]:
    files: list[tuple[str, tuple[str, bytes | IO[bytes], str]]] = []
    for part in parts:
        content: bytes | IO[bytes] = part.content  # type: ignore[assignment]
        if isinstance(part.content, Path):
            content = stack.enter_context(part.content.open("rb"))
        files.append((part.form_field, (part.filename, content, part.content_type)))
    return files


_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"))


def _sniff_suffix(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), "")


def _content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _image_part(index: int, image: ImageInput) -> _Part:
    """A batch image read into memory now, so every retry sends exactly the same bytes."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        name = f"image-{index:05d}{_sniff_suffix(data)}"
    elif isinstance(image, tuple):
        name, data = image
    else:
        path = Path(image)
        name, data = path.name, path.read_bytes()
    return _Part("images", name, data, _content_type(name))


def _file_part(name: str, content: FileInput, filename: str | None, default: str) -> _Part:
    if isinstance(content, bytes):
        filename = filename or default
        return _Part(name, filename, content, _content_type(filename))
    path = Path(content)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    filename = filename or path.name
    return _Part(name, filename, path, _content_type(filename))


class SupportsModelDump(Protocol):
    """A pydantic model such as the estimator's `ModelSpec`."""

    def model_dump(self, *, mode: str = ..., exclude_none: bool = ...) -> dict[str, Any]: ...


# --- the client --------------------------------------------------------------------------------


class FlipwatchClient:
    """Typed calls to the flipwatch HTTP API with retries.

    Give either `base_url` (the client opens and closes its own httpx.Client) or `http`, an
    existing httpx.Client whose base URL points at the API (a `fastapi.testclient.TestClient`
    works); `token` is the API key sent as a bearer token. `timeout` (seconds per request) applies
    to the client's own httpx.Client. Use it as a context manager, or call `close()`. `sleep`
    waits between retries and polls (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str,
        http: httpx.Client | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if http is None and base_url is None:
            raise ValueError("give base_url (e.g. 'http://flipwatch:8000') or an httpx.Client")
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._base = base_url.rstrip("/") if base_url else ""
        self._headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": f"flipwatch-client/{__version__}",
        }
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def close(self) -> None:
        """Close the httpx.Client if this client opened it (a passed-in one stays open)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> FlipwatchClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- models --------------------------------------------------------------------------------

    def register_model(
        self,
        spec: Mapping[str, Any] | SupportsModelDump,
        weights: FileInput,
        *,
        filename: str | None = None,
    ) -> Model:
        """Register a model version: its spec (a dict or a `ModelSpec`; any `weights` entry is
        dropped, the file is sent instead) and its weights (state dict or TorchScript). The server
        loads it before accepting it (422 `model-rejected` says why not); a name registered again
        becomes the next version."""
        body = (
            dict(spec)
            if isinstance(spec, Mapping)
            else spec.model_dump(mode="json", exclude_none=True)
        )
        body.pop("weights", None)
        part = _file_part("weights", weights, filename, "weights.pt")
        response = self._request(
            "POST",
            "/v1/models",
            retry=_Retry.UNPROCESSED,
            data={"spec": json.dumps(body)},
            files=[part],
        )
        return _from_json(Model, response.json())

    def get_model(self, model_id: Id) -> Model:
        return _from_json(Model, self._get(f"/v1/models/{model_id}"))

    def list_models(
        self, *, name: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page[Model]:
        """Models, newest first; `name` keeps the versions of one model."""
        return self._page(Model, "/v1/models", limit=limit, cursor=cursor, name=name)

    def iter_models(self, *, name: str | None = None, page_size: int = 50) -> Iterator[Model]:
        return self._iterate(Model, "/v1/models", page_size=page_size, name=name)

    # --- calibrations --------------------------------------------------------------------------

    def start_calibration(
        self,
        model_id: Id,
        archive: FileInput,
        *,
        steps: int | None = None,
        families: str | Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        filename: str | None = None,
    ) -> Calibration:
        """Queue a calibration on a labeled reference set: a zip or tar(.gz/.bz2/.xz) of an
        ImageFolder tree (one folder per class). `steps`, `families` and `severities` choose the
        suite (server defaults otherwise). Returns the queued calibration; see
        `wait_calibration`."""
        data: dict[str, str] = {}
        if steps is not None:
            data["steps"] = str(steps)
        if families is not None:
            data["families"] = families if isinstance(families, str) else ",".join(families)
        if severities is not None:
            data["severities"] = ",".join(str(s) for s in severities)
        part = _file_part("archive", archive, filename, "reference.zip")
        response = self._request(
            "POST",
            f"/v1/models/{model_id}/calibrations",
            retry=_Retry.UNPROCESSED,
            data=data or None,
            files=[part],
        )
        return _from_json(Calibration, response.json())

    def get_calibration(self, calibration_id: Id) -> Calibration:
        return _from_json(Calibration, self._get(f"/v1/calibrations/{calibration_id}"))

    def wait_calibration(
        self,
        calibration_id: Id,
        *,
        timeout: float = 3600.0,
        poll: float = 1.0,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Calibration:
        """Wait for the calibration's job; returns the succeeded calibration (with its result),
        or raises JobFailed (the job's error) or JobTimeout."""
        calibration = self.get_calibration(calibration_id)
        if calibration.state != "succeeded" and calibration.job_id is not None:
            self.wait_job(calibration.job_id, timeout=timeout, poll=poll, on_progress=on_progress)
            calibration = self.get_calibration(calibration_id)
        return calibration

    # --- streams -------------------------------------------------------------------------------

    def create_stream(
        self,
        name: str,
        model_id: Id,
        *,
        window_size: int | None = None,
        steps: int | None = None,
        auto_estimate: bool = True,
    ) -> Stream:
        """Create a stream (409 `stream-exists` if the name is taken); `window_size` and `steps`
        default to the server's settings."""
        body: dict[str, Any] = {
            "name": name,
            "model_id": str(model_id),
            "auto_estimate": auto_estimate,
        }
        if window_size is not None:
            body["window_size"] = window_size
        if steps is not None:
            body["steps"] = steps
        response = self._request("POST", "/v1/streams", retry=_Retry.UNPROCESSED, body=body)
        return _from_json(Stream, response.json())

    def get_stream(self, stream_id: Id) -> Stream:
        return _from_json(Stream, self._get(f"/v1/streams/{stream_id}"))

    def list_streams(self, *, limit: int = 50, cursor: str | None = None) -> Page[Stream]:
        return self._page(Stream, "/v1/streams", limit=limit, cursor=cursor)

    def iter_streams(self, *, page_size: int = 50) -> Iterator[Stream]:
        return self._iterate(Stream, "/v1/streams", page_size=page_size)

    # --- batches -------------------------------------------------------------------------------

    def post_batch(
        self,
        stream_id: Id,
        images: Sequence[ImageInput],
        *,
        idempotency_key: str | None = None,
    ) -> BatchAccepted:
        """Post one batch (JPEG, PNG or WebP; all stored or none). The images are read once and
        sent with one Idempotency-Key (a new UUID unless given: pass your own batch id to make a
        retry after a crash safe too), so retries never store them twice. A rejected batch
        raises FlipwatchError with one `errors` entry per bad file."""
        parts = [_image_part(i, image) for i, image in enumerate(images)]
        key = idempotency_key or uuid.uuid4().hex
        response = self._request(
            "POST",
            f"/v1/streams/{stream_id}/batches",
            retry=_Retry.IDEMPOTENT,
            files=parts,
            headers={"Idempotency-Key": key},
        )
        body = response.json()
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        accepted = _from_json(BatchAccepted, body)
        return dataclasses.replace(accepted, replayed=replayed, idempotency_key=key)

    def post_images(
        self, stream_id: Id, images: Iterable[ImageInput], *, batch_size: int = BATCH_SIZE
    ) -> list[BatchAccepted]:
        """Post `images` in batches of `batch_size` (each with its own key), in order."""
        answers: list[BatchAccepted] = []
        chunk: list[ImageInput] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == batch_size:
                answers.append(self.post_batch(stream_id, chunk))
                chunk = []
        if chunk:
            answers.append(self.post_batch(stream_id, chunk))
        return answers

    # --- estimates -----------------------------------------------------------------------------

    def request_estimate(self, stream_id: Id) -> Job:
        """Queue an estimate over the open window now (it needs 64 images; 409
        `window-too-small` otherwise) and return its job."""
        response = self._request(
            "POST", f"/v1/streams/{stream_id}/estimates", retry=_Retry.UNPROCESSED
        )
        return _from_json(Job, response.json())

    def get_estimate(self, estimate_id: Id) -> Estimate:
        return _from_json(Estimate, self._get(f"/v1/estimates/{estimate_id}"))

    def list_estimates(
        self, stream_id: Id, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Estimate]:
        """A stream's estimates, newest window first."""
        return self._page(
            Estimate, f"/v1/streams/{stream_id}/estimates", limit=limit, cursor=cursor
        )

    def iter_estimates(self, stream_id: Id, *, page_size: int = 50) -> Iterator[Estimate]:
        """Every estimate of the stream, newest window first, page by page."""
        return self._iterate(Estimate, f"/v1/streams/{stream_id}/estimates", page_size=page_size)

    # --- jobs ----------------------------------------------------------------------------------

    def get_job(self, job_id: Id) -> Job:
        return _from_json(Job, self._get(f"/v1/jobs/{job_id}"))

    def wait_job(
        self,
        job_id: Id,
        *,
        timeout: float = 600.0,
        poll: float = 0.5,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll the job every `poll` seconds until it succeeds (returned); JobFailed (with the
        job's error) if it failed, JobTimeout after `timeout` seconds. `on_progress` sees each
        unfinished poll."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.state == "succeeded":
                return job
            if job.state == "failed":
                raise JobFailed(job)
            if on_progress is not None:
                on_progress(job)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(job, timeout)
            self._sleep(min(poll, remaining))

    # --- labels --------------------------------------------------------------------------------

    def post_labels(self, stream_id: Id, labels: Iterable[Mapping[str, Any]]) -> LabelsAccepted:
        """Send true classes that arrived later, each `{"image_id" or "sha256": ..., "label":
        int}` (up to 10,000 per call); the answer has each touched window's realized accuracy.
        Setting a label twice is harmless, so a lost answer is resent."""
        response = self._request(
            "POST",
            f"/v1/streams/{stream_id}/labels",
            retry=_Retry.IDEMPOTENT,
            body={"labels": [dict(item) for item in labels]},
        )
        return _from_json(LabelsAccepted, response.json())

    # --- alerts --------------------------------------------------------------------------------

    def create_alert_rule(
        self,
        stream_id: Id,
        *,
        name: str,
        kind: AlertRuleKind,
        threshold: float,
        embedding_kind: EmbeddingKind | None = None,
        windows: int = 2,
        webhook_url: str | None = None,
    ) -> AlertRule:
        """Add a drift rule (docs/api.md, "Drift alerts"): it fires after `windows` consecutive
        breaching windows and resolves after as many clean ones."""
        body: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "threshold": threshold,
            "windows": windows,
        }
        if embedding_kind is not None:
            body["embedding_kind"] = embedding_kind
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        response = self._request(
            "POST", f"/v1/streams/{stream_id}/alert-rules", retry=_Retry.UNPROCESSED, body=body
        )
        return _from_json(AlertRule, response.json())

    def list_alert_rules(self, stream_id: Id) -> list[AlertRule]:
        """Every rule of the stream, oldest first, with its current state."""
        body = self._get(f"/v1/streams/{stream_id}/alert-rules")
        return [_from_json(AlertRule, item) for item in body["items"]]

    def get_alert_rule(self, stream_id: Id, rule_id: Id) -> AlertRule:
        return _from_json(AlertRule, self._get(f"/v1/streams/{stream_id}/alert-rules/{rule_id}"))

    def delete_alert_rule(self, stream_id: Id, rule_id: Id) -> None:
        """Delete a rule; its history stays listed (with `rule_id` None). A retried delete that
        finds the rule gone already is a success."""
        try:
            self._request(
                "DELETE", f"/v1/streams/{stream_id}/alert-rules/{rule_id}", retry=_Retry.IDEMPOTENT
            )
        except FlipwatchError as exc:
            if exc.code != "alert-rule-not-found":
                raise

    def list_alert_events(
        self,
        stream_id: Id,
        *,
        rule_id: Id | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[AlertEvent]:
        """The stream's alert state changes, newest first; `rule_id` keeps one rule's."""
        return self._page(
            AlertEvent,
            f"/v1/streams/{stream_id}/alerts",
            limit=limit,
            cursor=cursor,
            rule_id=str(rule_id) if rule_id else None,
        )

    def iter_alert_events(
        self, stream_id: Id, *, rule_id: Id | None = None, page_size: int = 50
    ) -> Iterator[AlertEvent]:
        return self._iterate(
            AlertEvent,
            f"/v1/streams/{stream_id}/alerts",
            page_size=page_size,
            rule_id=str(rule_id) if rule_id else None,
        )

    # --- plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        response = self._request("GET", path, retry=_Retry.IDEMPOTENT, params=params or None)
        return response.json()

    def _page(
        self, item: type[T], path: str, *, limit: int, cursor: str | None, **params: Any
    ) -> Page[T]:
        query = {key: value for key, value in params.items() if value is not None}
        query["limit"] = limit
        if cursor is not None:
            query["cursor"] = cursor
        body = self._get(path, **query)
        return Page(
            items=[_from_json(item, entry) for entry in body["items"]],
            next_cursor=body.get("next_cursor"),
        )

    def _iterate(self, item: type[T], path: str, *, page_size: int, **params: Any) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self._page(item, path, limit=page_size, cursor=cursor, **params)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry: _Retry,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        data: Mapping[str, str] | None = None,
        files: Sequence[_Part] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send, retrying what `retry` allows; any answer >= 400 left is a FlipwatchError."""
        url = self._base + path
        request = f"{method} {path}"
        all_headers = self._headers | dict(headers or {})
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.retry.attempts
            try:
                with ExitStack() as stack:
                    response = self._http.request(
                        method,
                        url,
                        params=params,
                        json=body,
                        data=data,
                        files=_open_parts(files, stack) if files else None,
                        headers=all_headers,
                    )
            except httpx.TransportError as exc:
                resend = retry is _Retry.IDEMPOTENT or _never_sent(exc)
                if last or not resend:
                    note = "" if resend else " (not resent: the server may have processed it)"
                    raise TransportFailed(
                        f"no answer after {attempt} attempt(s): {type(exc).__name__}: {exc}{note}",
                        code="transport-error",
                        request=request,
                    ) from exc
                delay = self.retry.delay(attempt)
                log.warning("%s: %s; retry %d in %.1f s", request, exc, attempt, delay)
                self._sleep(delay)
                continue
            status = response.status_code
            if status < 400:
                return response
            allowed = RETRY_STATUSES if retry is _Retry.IDEMPOTENT else NOT_PROCESSED_STATUSES
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if last or status not in allowed or (wait or 0) > self.retry.max_retry_after:
                raise _problem_error(response, request)
            delay = wait if wait is not None else self.retry.delay(attempt)
            log.warning("%s: HTTP %d; retry %d in %.1f s", request, status, attempt, delay)
            response.close()
            self._sleep(delay)


__all__ = [
    "AlertEvent",
    "AlertRule",
    "BatchAccepted",
    "Calibration",
    "Estimate",
    "FlipwatchClient",
    "FlipwatchError",
    "IdempotencyConflict",
    "Job",
    "JobFailed",
    "JobLink",
    "JobProgress",
    "JobTimeout",
    "LabelsAccepted",
    "Model",
    "Page",
    "RetryPolicy",
    "Stream",
    "TransportFailed",
    "WindowFill",
    "WindowRealized",
    "retry_after_seconds",
]
