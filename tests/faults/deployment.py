"""A flipwatch deployment made of real processes, and the reconciliation every fault test ends
with: accepted images = image rows = stored files, one estimate per closed window, no stray files.

Production mode: `flipwatch api` + `flipwatch worker` processes on a Postgres database and a
private Redis. Embedded mode: one `flipwatch serve` process on SQLite. The model is the tiny CNN
with a 1000-class head and `imagenet: true`, so the paper's built-in calibration applies and no
calibration job is needed.
"""

from __future__ import annotations

import io
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image as PILImage
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from flipwatch.service.core.tables import Batch, Estimate, Image, Job, Stream
from tests.faults.harness import RedisServer, Service, free_port, service_env, wait_until
from tests.tiny_models import blob_images, confident_tiny

TINY_IMAGENET_SPEC: dict[str, Any] = {
    "name": "tiny-imagenet",
    "format": "entrypoint",
    "entrypoint": "tiny",
    "entrypoint_kwargs": {"num_classes": 1000},
    "num_classes": 1000,
    "input": {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
    "imagenet": True,
}

# Recovery timers for the tests: a dead worker's job or a lost message comes back in seconds.
FAST_RECOVERY: dict[str, object] = {
    "job_heartbeat_seconds": 0.5,
    "job_stale_seconds": 3,
    "job_lost_seconds": 3,
    "reconcile_interval_seconds": 1,
}


def save_tiny_imagenet_weights(path: Path) -> Path:
    torch.save(confident_tiny(1000).state_dict(), path)
    return path


def png_batch(count: int, *, seed: int) -> list[tuple[str, bytes]]:
    """`count` distinct 32×32 PNGs (file name, bytes); a seed gives other images."""
    files = []
    for i, image in enumerate(blob_images(count, seed=seed)):
        out = io.BytesIO()
        PILImage.fromarray(image.permute(1, 2, 0).numpy()).save(out, format="PNG")
        files.append((f"s{seed}-{i:04d}.png", out.getvalue()))
    return files


def multipart(files: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/png")) for name, data in files]


@dataclass(frozen=True)
class Reconciliation:
    """What the database and the data directory hold after a test."""

    image_rows: int
    files: int
    unreferenced_files: list[str]
    missing_files: list[str]
    stray_files: list[str]
    batches: int
    positions_ok: bool
    estimates_per_window: dict[tuple[str, int], int]
    closed_windows: list[tuple[str, int]]
    job_states: dict[str, int]


@dataclass
class Deployment:
    """The processes of one test and the helpers to drive and inspect them."""

    workdir: Path
    database_url: str
    redis: RedisServer | None = None
    settings: dict[str, object] = field(default_factory=dict)
    admin_key: str = field(default_factory=lambda: "fw-fault-" + secrets.token_urlsafe(32))
    api: Service | None = None
    workers: list[Service] = field(default_factory=list)
    _engine: Engine | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def embedded(self) -> bool:
        return self.redis is None

    def env(self, **extra: object) -> dict[str, str]:
        values: dict[str, object] = {
            "environment": "prod",
            "data_dir": self.data_dir,
            "database_url": None if self.embedded else self.database_url,
            "redis_url": None if self.redis is None else self.redis.url,
            "device": "cpu",
            "torch_threads": 1,
            "bootstrap_admin_key": self.admin_key,
            "webhook_poll_seconds": 0,
            **FAST_RECOVERY,
            **self.settings,
            **extra,
        }
        return service_env(values)

    # --- processes ---------------------------------------------------------------------------

    def start_api(self, **extra: object) -> Service:
        """`flipwatch api` (production) or `flipwatch serve` (embedded), on a free port."""
        port = self.api.port if self.api is not None else free_port()
        command = "serve" if self.embedded else "api"
        self.api = Service(
            [command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            self.env(**extra),
            self.workdir / f"{command}.log",
            port=port,
        ).start()
        return self.api

    def start_worker(self, **extra: object) -> Service:
        worker = Service(
            ["worker", "--metrics-port", "0", "--log-level", "info"],
            self.env(**extra),
            self.workdir / f"worker-{len(self.workers)}.log",
        ).start(ready_path=None)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.api is not None:
            self.api.kill()
        if self._engine is not None:
            self._engine.dispose()

    def logs(self) -> str:
        services = [s for s in [self.api, *self.workers] if s is not None]
        return "\n".join(f"--- {' '.join(s.command[:1])}\n{s.log_tail()}" for s in services)

    # --- HTTP --------------------------------------------------------------------------------

    def client(self, timeout: float = 30.0) -> httpx.Client:
        assert self.api is not None
        return httpx.Client(
            base_url=self.api.url,
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=timeout,
        )

    def register_model(self, http: httpx.Client, weights: Path) -> str:
        import json

        spec = TINY_IMAGENET_SPEC | {"name": f"m-{uuid.uuid4().hex[:8]}"}
        with weights.open("rb") as handle:
            answer = http.post(
                "/v1/models",
                data={"spec": json.dumps(spec)},
                files={"weights": ("tiny.pt", handle, "application/octet-stream")},
            )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def create_stream(
        self,
        http: httpx.Client,
        model_id: str,
        *,
        window_size: int = 64,
        steps: int = 50,
        auto_estimate: bool = True,
    ) -> str:
        answer = http.post(
            "/v1/streams",
            json={
                "name": f"fault-{uuid.uuid4().hex[:8]}",
                "model_id": model_id,
                "window_size": window_size,
                "steps": steps,
                "auto_estimate": auto_estimate,
            },
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def wait_jobs_done(self, http: httpx.Client, job_ids: list[str], *, timeout: float) -> None:
        def done() -> bool:
            answers = [http.get(f"/v1/jobs/{j}") for j in job_ids]
            if any(a.status_code == 503 for a in answers):
                return False  # the API's pool is still reconnecting after an outage: ask again
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            states = [a.json()["state"] for a in answers]
            assert "failed" not in states, f"a job failed\n{self.logs()}"
            return all(s == "succeeded" for s in states)

        wait_until(done, timeout=timeout, interval=0.25, what=f"jobs {job_ids}\n{self.logs()}")

    # --- the database and the files ----------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            url = self.database_url
            if self.embedded:
                url = f"sqlite:///{self.data_dir / 'flipwatch.db'}"
            self._engine = create_engine(url)
        return self._engine

    def reconcile(self) -> Reconciliation:
        with self.engine.connect() as conn:
            paths = [p for (p,) in conn.execute(select(Image.path))]
            batches = conn.scalar(select(func.count()).select_from(Batch)) or 0
            low, high = func.min(Image.position), func.max(Image.position)
            per_stream = conn.execute(
                select(Image.stream_id, func.count(), low, high).group_by(Image.stream_id)
            ).all()
            streams = conn.execute(
                select(Stream.id, Stream.images_total, Stream.current_window_index)
            ).all()
            estimates = conn.execute(
                select(Estimate.stream_id, Estimate.window_index, func.count()).group_by(
                    Estimate.stream_id, Estimate.window_index
                )
            ).all()
            jobs = Counter(state for (state,) in conn.execute(select(Job.state)))
        totals = {str(s.id): s.images_total for s in streams}
        positions_ok = all(
            count == totals[str(stream_id)] and low == 0 and high == count - 1
            for stream_id, count, low, high in per_stream
        ) and sum(c for _, c, _, _ in per_stream) == sum(totals.values())
        images_dir = self.data_dir / "images"
        # Storage keys (the local backend: data_dir/<key>), as the image rows record them.
        files = {
            p.relative_to(self.data_dir).as_posix() for p in images_dir.rglob("*") if p.is_file()
        }
        referenced = set(paths)
        stray = [
            str(p)
            for p in self.data_dir.rglob("*")
            if p.is_file()
            and (p.name.endswith(".tmp") or {"incoming", "trash", ".tmp"} & set(p.parts))
        ]
        return Reconciliation(
            image_rows=len(paths),
            files=len(files),
            unreferenced_files=sorted(files - referenced),
            missing_files=sorted(referenced - files),
            stray_files=sorted(stray),
            batches=batches,
            positions_ok=positions_ok,
            estimates_per_window={(str(s), int(w)): int(n) for s, w, n in estimates},
            closed_windows=[(str(s.id), w) for s in streams for w in range(s.current_window_index)],
            job_states=dict(jobs),
        )

    def assert_consistent(self, *, accepted_images: int, estimated: bool = True) -> Reconciliation:
        """Every accepted image stored exactly once, every closed window estimated exactly once
        (none when `estimated` is False: streams without auto_estimate), no file without a row,
        no row without a file, nothing left in temporary places."""
        state = self.reconcile()
        assert state.image_rows == accepted_images, state
        assert state.files == accepted_images, state
        assert state.unreferenced_files == [], state.unreferenced_files[:5]
        assert state.missing_files == [], state.missing_files[:5]
        assert state.stray_files == [], state.stray_files[:5]
        assert state.positions_ok, state
        if not estimated:
            assert state.estimates_per_window == {}, state
            return state
        for window in state.closed_windows:
            assert state.estimates_per_window.get(window) == 1, (window, state)
        assert set(state.estimates_per_window) == set(state.closed_windows), state
        return state
