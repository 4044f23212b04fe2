"""`flipwatch demo` over HTTP: the embedded server, driven the way a production pipeline would.

Starts `flipwatch serve` in a background thread on a free local port, then with httpx: registers
the demo MNIST model (spec + weights), uploads a labeled reference set as a zip and waits for the
calibration, creates a stream, posts clean held-out images and then shifted ones as PNG batches,
and prints each window's estimate as it arrives beside the true accuracy the demo knows from its
labels and the confidence baselines. `FlipwatchClient` is also what the e2e tests drive.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import httpx
import torch
from PIL import Image as PILImage
from torch import Tensor

from flipwatch.service.core.storage import sha256_file
from flipwatch.workers.estimation.spec import ModelSpec

Log = Callable[[str], None]

BATCH_SIZE = 100


class JobFailed(RuntimeError):
    """A job ended in `failed`; the message is the job's error."""


class FlipwatchClient:
    """The few API calls a pipeline makes, over any httpx.Client (a live server or TestClient)."""

    def __init__(self, http: httpx.Client, token: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}

    def _call(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = self.http.request(method, url, headers=self.headers | (headers or {}), **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {url}: {response.status_code} {response.text}")
        return response.json()

    def register_model(self, spec: ModelSpec, weights: Path) -> dict[str, Any]:
        """POST /v1/models: the spec without `weights`, and the weights file beside it."""
        body = spec.model_copy(update={"weights": None}).model_dump_json(exclude_none=True)
        with weights.open("rb") as handle:
            return self._call(
                "POST",
                "/v1/models",
                data={"spec": body},
                files={"weights": (weights.name, handle, "application/octet-stream")},
            )

    def start_calibration(
        self, model_id: str, archive: Path, *, families: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """Upload a reference set; `families` narrows the corruption suite for this model."""
        data = {"families": ",".join(families)} if families else None
        with archive.open("rb") as handle:
            return self._call(
                "POST",
                f"/v1/models/{model_id}/calibrations",
                files={"archive": (archive.name, handle, "application/zip")},
                data=data,
            )

    def calibration(self, calibration_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/calibrations/{calibration_id}")

    def model(self, model_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{model_id}")

    def create_stream(
        self, name: str, model_id: str, *, window_size: int, steps: int
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/v1/streams",
            json={"name": name, "model_id": model_id, "window_size": window_size, "steps": steps},
        )

    def post_batch(self, stream_id: str, images: Tensor, *, first: int = 0) -> dict[str, Any]:
        """POST one batch of uint8 (N, C, H, W) images as PNG files."""
        files = [
            ("images", (f"img-{first + i:06d}.png", png_bytes(image), "image/png"))
            for i, image in enumerate(images)
        ]
        return self._call(
            "POST",
            f"/v1/streams/{stream_id}/batches",
            files=files,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )

    def post_images(
        self, stream_id: str, images: Tensor, *, batch_size: int = BATCH_SIZE
    ) -> list[str]:
        """Post `images` in batches; returns the ids of the estimate jobs the batches queued."""
        job_ids: list[str] = []
        for start in range(0, len(images), batch_size):
            answer = self.post_batch(stream_id, images[start : start + batch_size], first=start)
            job_ids.extend(str(job["id"]) for job in answer["jobs"])
        return job_ids

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.25,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until it succeeds (returned) or fails (JobFailed); TimeoutError after."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] == "succeeded":
                return job
            if job["state"] == "failed":
                raise JobFailed(f"job {job_id} failed: {job['error']}")
            if on_progress is not None:
                on_progress(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def estimate(self, estimate_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/estimates/{estimate_id}")


def png_bytes(image: Tensor) -> bytes:
    """uint8 (C, H, W), C = 1 or 3 -> PNG bytes (lossless, so the worker sees the same pixels)."""
    array = image.permute(1, 2, 0).contiguous().numpy()
    pixels = array[:, :, 0] if array.shape[-1] == 1 else array
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def reference_zip(images: Tensor, labels: Tensor, path: Path) -> Path:
    """An ImageFolder zip (`<label>/<n>.png`) of a labeled set, for POST .../calibrations."""
    from flipwatch.demos.data import write_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "reference"
        files = write_image_folder(images, root, labels)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, file.relative_to(root).as_posix())
    return path


# --- the demo -----------------------------------------------------------------------------------


def _pct(value: object) -> str:
    return f"{100 * value:5.1f}%" if isinstance(value, int | float) else "    - "


def _calibrated_model(
    client: FlipwatchClient, spec: ModelSpec, data_dir: Path, log: Log, *, suite_key: str
) -> tuple[str, dict[str, Any]]:
    """Register and calibrate the demo model, or reuse what an earlier run left in `data_dir`
    (same weights, same calibration suite and steps)."""
    from flipwatch.demos.data import DEMO_FAMILIES, demo_splits

    weights = Path(spec.weights or "")
    state_path = data_dir / "demo-state.json"
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
            model = client.model(state["model_id"])
            calibration = client.calibration(state["calibration_id"])
            digest = sha256_file(weights)
            if (
                model["weights_sha256"] == digest
                and calibration["state"] == "succeeded"
                and state.get("suite") == suite_key
            ):
                log(f"reusing model {model['id']} and its calibration (from {state_path})")
                return model["id"], calibration
        except (RuntimeError, KeyError, ValueError):
            pass
    model = client.register_model(spec, weights)
    log(f"registered {model['name']} v{model['version']} as {model['id']}")
    reference = demo_splits(0).reference
    with tempfile.TemporaryDirectory() as tmp:
        archive = reference_zip(reference.images, reference.labels, Path(tmp) / "reference.zip")
        calibration = client.start_calibration(model["id"], archive, families=DEMO_FAMILIES)
    log(
        f"calibrating on {calibration['reference_images']} labeled reference images "
        f"({len(DEMO_FAMILIES)} corruption families; once per data dir)..."
    )
    last = [-1]

    def show(job: dict[str, Any]) -> None:
        done, total = job["progress"]["steps_done"], job["progress"]["steps_total"]
        if done != last[0] and done > 0 and job["state"] == "running":
            last[0] = done
            log(f"  calibration variant {done}/{total}")

    started = time.perf_counter()
    client.wait_job(str(calibration["job_id"]), timeout=3600, poll=1.0, on_progress=show)
    calibration = client.calibration(str(calibration["id"]))
    result = calibration["result"] or {}
    log(
        f"calibrated in {time.perf_counter() - started:.0f} s: signal {result.get('selected')} "
        f"(leave-one-family-out MAE {_pct(result.get('selected_mae'))}), reference accuracy "
        f"{_pct(calibration['reference_accuracy'])}"
    )
    state_path.write_text(
        json.dumps(
            {"model_id": model["id"], "calibration_id": calibration["id"], "suite": suite_key}
        )
        + "\n"
    )
    return model["id"], calibration


def demo_windows(window: int, seed: int = 0) -> list[tuple[str, Tensor, Tensor]]:
    """(name, images, labels) per window: clean held-out MNIST, then two real shifts."""
    from flipwatch.demos.data import demo_splits
    from flipwatch.workers.estimation.variants import make_variant

    splits = demo_splits(seed)
    held, digits = splits.heldout, splits.digits

    def take(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        reps = -(-window // len(images))  # repeat a short set to fill the window
        return images.repeat(reps, 1, 1, 1)[:window], labels.repeat(reps)[:window]

    noisy = make_variant(held.images, "gaussian_noise", 4, False, seed=seed + 1000)
    return [
        ("mnist held-out (clean)", *take(held.images, held.labels)),
        ("mnist held-out gaussian_noise-4", *take(noisy, held.labels)),
        ("sklearn digits 8x8 upscaled", *take(digits.images, digits.labels)),
    ]


class ServerFactory(Protocol):
    """Starts an embedded server for the demo: `flipwatch.cli.startup.embedded_server`."""

    def __call__(
        self, data_dir: Path, *, port: int = 0, steps: int = 250
    ) -> AbstractContextManager[Any]: ...


def run_http_demo(
    *,
    server_factory: ServerFactory,
    data_dir: Path,
    port: int = 0,
    steps: int = 250,
    window: int = 1000,
    log: Log | None = None,
) -> int:
    """Run the demo end to end over HTTP against an embedded server; returns an exit status.

    `server_factory` yields an object with `url` and `admin_key` (the CLI passes its start-up
    code, so this package never imports the CLI)."""
    from flipwatch.demos.data import DEMO_FAMILIES, ensure_demo_model, evaluate_accuracy
    from flipwatch.workers.estimation import load_model

    torch.set_num_threads(1)  # the demo CNN is tiny: see workers/offline_demo.py

    log = log or (lambda line: print(line, file=sys.stderr))
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    spec, _spec_path = ensure_demo_model(data_dir / "demo-model", log=log)
    model = load_model(spec)
    # The calibration asks for the offline demo's suite (61 trajectories): a few minutes once per
    # data dir on a 2-core CPU; later runs reuse it (data_dir/demo-state.json).
    with server_factory(data_dir, port=port, steps=steps) as server:
        log(f"embedded server on {server.url} (data dir {data_dir.resolve()})")
        with httpx.Client(base_url=server.url, timeout=120) as http:
            client = FlipwatchClient(http, server.admin_key)
            suite_key = f"families={DEMO_FAMILIES!r} steps={steps}"
            model_id, _calibration = _calibrated_model(
                client, spec, data_dir, log, suite_key=suite_key
            )
            name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
            stream = client.create_stream(name, model_id, window_size=window, steps=steps)
            log(f"stream {stream['name']}: window {window} images, {steps} adaptation steps")
            windows = demo_windows(window)
            pending: list[tuple[str, str, float]] = []
            for label, images, labels in windows:
                job_ids = client.post_images(stream["id"], images)
                truth = evaluate_accuracy(model, images, labels)
                log(f"posted {len(images)} images: {label}")
                pending.extend((job_id, label, truth) for job_id in job_ids)
            # The table is the demo's result: stdout; everything else is progress on stderr.
            print(f"{'window':34} {'true':>6} {'flipwatch':>9} {'AC':>6} {'DoC':>6} {'ATC':>6}")
            for job_id, label, truth in pending:
                job = client.wait_job(job_id, timeout=3600, poll=0.5)
                estimate = client.estimate(str(job["estimate_id"]))
                baselines = estimate["result"].get("baselines", {})
                print(
                    f"{label:34} {_pct(truth):>6} {_pct(estimate['estimated_accuracy']):>9} "
                    f"{_pct(baselines.get('ac')):>6} {_pct(baselines.get('doc')):>6} "
                    f"{_pct(baselines.get('atc')):>6}"
                )
    return 0


__all__ = [
    "FlipwatchClient",
    "JobFailed",
    "demo_windows",
    "png_bytes",
    "reference_zip",
    "run_http_demo",
]
