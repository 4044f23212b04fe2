"""Test data as plain functions: add, flush, return. Values are deterministic (a counter), so
assertions can be exact. Images are tiny generated PNG/JPEG/WebP bytes.
"""

from __future__ import annotations

import io
import itertools
import stat
import struct
import tarfile
import uuid
import zipfile
import zlib
from typing import Any

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from flipwatch.service.core.tables import (
    AlertRule,
    ApiKey,
    Batch,
    Calibration,
    Estimate,
    Image,
    Job,
    Model,
    Stream,
    utcnow,
)
from flipwatch.service.estimate.latest import record_latest_estimate
from flipwatch.workers.estimation.result import EstimateResult

_counter = itertools.count(1)

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "format": "entrypoint",
    "entrypoint": "tiny",
    "entrypoint_kwargs": {},
    "num_classes": 10,
    "input": {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
    "imagenet": False,
}


def next_id() -> int:
    return next(_counter)


def make_model(session: Session, *, calibrated: bool = True, **overrides: Any) -> Model:
    """A model row (its weights key holds no object; nothing loads it). `calibrated` adds a
    succeeded calibration, so its streams may be estimated."""
    n = next_id()
    name = overrides.pop("name", f"model-{n}")
    digest = overrides.pop("weights_sha256", f"{n:064x}")
    spec = {
        **TINY_SPEC,
        "name": name,
        "weights": f"models/{digest}.pt",
        **overrides.pop("spec", {}),
    }
    model = Model(
        name=name,
        version=overrides.pop("version", 1),
        spec=spec,
        weights_path=spec["weights"],
        weights_sha256=digest,
        **overrides,
    )
    session.add(model)
    session.flush()
    if calibrated:
        make_calibration(session, model=model, state="succeeded")
    return model


def make_calibration(session: Session, *, model: Model, **overrides: Any) -> Calibration:
    values: dict[str, Any] = {
        "model_id": model.id,
        "state": "succeeded",
        "reference_path": "calibrations/none/reference",
        "reference_images": 100,
        "reference_classes": ["a", "b"],
        "result": {"selected": "wf"},
        "reference_accuracy": 0.9,
    }
    calibration = Calibration(**(values | overrides))
    session.add(calibration)
    session.flush()
    return calibration


def make_stream(session: Session, *, model: Model | None = None, **overrides: Any) -> Stream:
    model = model or make_model(session)
    values: dict[str, Any] = {
        "name": f"stream-{next_id()}",
        "model_id": model.id,
        "window_size": 64,
        "steps": 10,
        "auto_estimate": True,
        "images_total": 0,
        "current_window_index": 0,
        "window_fill": 0,
    }
    stream = Stream(**(values | overrides))
    session.add(stream)
    session.flush()
    return stream


def make_job(session: Session, *, stream: Stream, window_index: int = 0, **overrides: Any) -> Job:
    values: dict[str, Any] = {
        "kind": "estimate",
        "state": "queued",
        "stream_id": stream.id,
        "model_id": stream.model_id,
        "window_index": window_index,
        "steps_total": stream.steps,
        "queue": "estimates.gpu",
    }
    job = Job(**(values | overrides))
    session.add(job)
    session.flush()
    return job


def make_estimate(
    session: Session, *, stream: Stream, window_index: int, **overrides: Any
) -> Estimate:
    accuracy = overrides.pop("estimated_accuracy", round(0.9 - 0.01 * window_index, 4))
    values: dict[str, Any] = {
        "stream_id": stream.id,
        "job_id": None,
        "window_index": window_index,
        "model_id": stream.model_id,
        "model_version": 1,
        "image_count": stream.window_size,
        "estimated_accuracy": accuracy,
        "signal": "wf",
        "weighted_flips": 0.1,
        "result": estimate_result(accuracy, steps=stream.steps),
    }
    estimate = Estimate(**(values | overrides))
    session.add(estimate)
    session.flush()
    record_latest_estimate(session, estimate)  # as the estimate job does, same transaction
    return estimate


def make_api_key(session: Session, *, role: str = "ingest") -> tuple[ApiKey, str]:
    from flipwatch.service.core.auth import create_api_key

    return create_api_key(session, role=role, name=f"key-{next_id()}")


# --- image bytes -------------------------------------------------------------------------------


def image_bytes(index: int = 0, *, fmt: str = "PNG", size: tuple[int, int] = (16, 16)) -> bytes:
    """A small deterministic image; `index` varies its colour so digests differ."""
    color = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
    img = PILImage.new("RGB", size, color)
    img.putpixel((0, 0), (index % 256, (index // 256) % 256, 7))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def patterned_image(fmt: str, *, side: int = 64) -> bytes:
    """A detailed image (a byte ramp), so that cutting its file leaves real data missing."""
    img = PILImage.frombytes("RGB", (side, side), bytes(range(256)) * (side * side * 3 // 256))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def noise_png(index: int, *, side: int) -> bytes:
    """An incompressible PNG of about 3·side² bytes (for size limits)."""
    import random

    rng = random.Random(index)
    img = PILImage.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height pixels but carries almost no data: a decompression bomb's
    header, harmless unless something decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def files(
    *items: tuple[str, bytes], field: str = "images"
) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx `files=` for a batch."""
    return [(field, (name, data, "application/octet-stream")) for name, data in items]


def random_id() -> uuid.UUID:
    return uuid.UUID(int=next_id())


# --- reference archives (calibrations) ------------------------------------------------------


def zip_bytes(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


REFERENCE = {f"ref/{cls}/{i}.png": image_bytes(i) for cls in ("cat", "dog") for i in range(3)}
"""Two classes of three images each, under one wrapping folder."""


# --- alerts (service/alert/) -----------------------------------------------------------------


def estimate_result(
    accuracy: float,
    *,
    baselines: dict[str, float | None] | None = None,
    embedding: dict[str, float | None] | None = None,
    steps: int = 250,
) -> dict[str, Any]:
    """An Estimate.result as the worker stores it (`EstimateResult.to_dict()`)."""
    return EstimateResult(
        estimated_accuracy=accuracy,
        signal="wf",
        signal_value=10.0,
        calibration="builtin",
        calibration_mae=None,
        weighted_flips=0.1,
        signals={"wf": {steps: 10.0}},
        baselines=baselines
        if baselines is not None
        else {"ac": 0.95, "doc": 0.93, "atc": 0.92, "atc_ne": None, "cot": 0.91},
        embedding=embedding
        if embedding is not None
        else {"frechet": 1.5, "silhouette": 0.4, "centroid_shift": None},
        steps=steps,
        probe_size=64,
        num_images=1000,
        seconds=1.0,
        device="cpu",
        used_fraction=1.0,
        epsilon=0.0,
        lower=round(max(0.0, accuracy - 0.05), 4),
        upper=round(min(1.0, accuracy + 0.05), 4),
        interval_level=0.9,
        estimator="fit:wf@250",
        label_shift=0.12,
    ).to_dict()


def make_alert_rule(session: Session, *, stream: Stream, **overrides: Any) -> AlertRule:
    """An accuracy floor of 0.8 with K=2 unless overridden."""
    now = utcnow()
    values: dict[str, Any] = {
        "stream_id": stream.id,
        "name": f"rule-{next_id()}",
        "kind": "accuracy_below",
        "threshold": 0.8,
        "embedding_kind": None,
        "windows": 2,
        "webhook_url": None,
        "state": "ok",
        "streak": 0,
        "created_at": now,
        "updated_at": now,
    }
    rule = AlertRule(**(values | overrides))
    session.add(rule)
    session.flush()
    return rule


def make_images(
    session: Session, *, stream: Stream, window_index: int, predicted: list[int | None]
) -> list[Image]:
    """One batch of images in `window_index` whose model predictions are `predicted` (what the
    estimate job stores); distinct content hashes from the counter."""
    key, _ = make_api_key(session, role="ingest")
    batch = Batch(
        stream_id=stream.id,
        api_key_id=key.id,
        request_sha256=f"{next_id():064x}",
        image_count=len(predicted),
        response={},
    )
    session.add(batch)
    session.flush()
    images = []
    for label in predicted:
        n = next_id()
        images.append(
            Image(
                sha256=f"{n:064x}",
                stream_id=stream.id,
                batch_id=batch.id,
                window_index=window_index,
                position=n,
                path=f"/nonexistent/{n}.png",
                filename=f"{n}.png",
                width=32,
                height=32,
                format="PNG",
                size_bytes=100,
                predicted_label=label,
            )
        )
    session.add_all(images)
    session.flush()
    return images


def raw_multipart(
    *parts: tuple[bytes, bytes], boundary: bytes = b"fwboundary"
) -> tuple[bytes, dict[str, str]]:
    """A multipart body built byte by byte: (filename header bytes, content) per part in field
    `images`. httpx escapes odd file names (a NUL becomes %00); this sends them as they are."""
    body = b""
    for filename, content in parts:
        body += (
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="images"; filename="' + filename + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        )
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
