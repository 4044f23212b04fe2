"""Ingest under load: N concurrent clients posting 64-image batches to several streams.

Production mode on loopback: `flipwatch api` under uvicorn as a subprocess, on a fresh Postgres
database, with Redis configured as the broker; no worker runs (streams have `auto_estimate`
off, so no job is queued). Each client is a thread with its own httpx connection that posts
batches of distinct JPEGs (one shared 224×224 photo-like base per slot, made unique by a JPEG
comment segment, so every image is a new file) with an Idempotency-Key, until the duration or the
request budget runs out. Then the reconciliation: images accepted in 202 answers = image rows =
files under data_dir/images, and nothing left in data_dir/incoming.

`--validation` picks where image validation (`check_image`: header, then a full Pillow decode)
runs: `inline` (the request's threadpool thread, FLIPWATCH_VALIDATION_PROCESSES=0), `process`
(a process pool of `--processes` workers), or `both` (one after the other, each on its own fresh
database and data dir, same load; `--rounds N` alternates them N times), so before and after
come from the same run. The JSON also
gives the measured cost of validating one batch in this process (`validate_batch_s`), to show
what share of the API's time validation is.

    nice -n 10 python benchmarks/ingest_load.py [--clients 8] [--streams 4] [--duration 30]
        [--max-requests 600] [--batch 64] [--validation inline|process|both] [--processes 2]
        [--rounds 1]

Loopback only; Postgres from FLIPWATCH_BENCH_POSTGRES_URL (default postgres@127.0.0.1:5432),
Redis from FLIPWATCH_BENCH_REDIS_URL (default redis://127.0.0.1:6379/15; nothing is written).
Prints ONE JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image as PILImage
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ADMIN_URL = os.environ.get(
    "FLIPWATCH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FLIPWATCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
SPEC: dict[str, Any] = {
    "name": "bench",
    "format": "entrypoint",
    "entrypoint": "tiny",
    "entrypoint_kwargs": {"num_classes": 1000},
    "num_classes": 1000,
    "input": {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
    "imagenet": True,
}


# --- images --------------------------------------------------------------------------------------


def base_jpegs(count: int, side: int) -> list[bytes]:
    """`count` photo-like JPEGs (smooth gradients plus texture: real decode work, ~15 KB)."""
    import random

    images = []
    for i in range(count):
        rng = random.Random(i)
        small = PILImage.frombytes("RGB", (16, 16), rng.randbytes(16 * 16 * 3))
        img = small.resize((side, side), PILImage.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        images.append(out.getvalue())
    return images


def unique(jpeg: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment (COM) after SOI: new bytes, same pixels."""
    text = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


# --- the deployment -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Deployment:
    """A fresh database and data dir, and the API process on them."""

    validation_processes: int
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fw-load-")))
    token: str = field(default_factory=lambda: "fw_bench_" + secrets.token_hex(24))
    port: int = field(default_factory=free_port)
    database_url: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        name = f"flipwatch_load_{secrets.token_hex(4)}"
        with psycopg.connect(_dsn(ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database_url = make_url(ADMIN_URL).set(database=name).render_as_string(False)
        env = {
            **os.environ,
            "FLIPWATCH_DATABASE_URL": self.database_url,
            "FLIPWATCH_REDIS_URL": REDIS_URL,
            "FLIPWATCH_DATA_DIR": str(self.data_dir),
            "FLIPWATCH_BOOTSTRAP_ADMIN_KEY": self.token,
            "FLIPWATCH_LOG_LEVEL": "warning",
            "FLIPWATCH_WEBHOOK_POLL_SECONDS": "0",
            "FLIPWATCH_VALIDATION_PROCESSES": str(self.validation_processes),
        }
        cli = [str(Path(sys.executable).with_name("flipwatch"))]
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        self.process = subprocess.Popen(
            [*cli, "api", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "api.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not become ready: {(self.root / 'api.log').read_text()}")

    def create_streams(self, count: int) -> list[str]:
        """A model row (nothing loads it: no worker runs) and `count` streams without jobs."""
        from flipwatch.service.core.tables import Model

        engine = create_engine(self.database_url)
        with Session(engine) as session:
            model = Model(
                name="bench",
                version=1,
                spec={**SPEC, "weights": "/nonexistent/bench.pt"},
                weights_path="/nonexistent/bench.pt",
                weights_sha256="0" * 64,
            )
            session.add(model)
            session.commit()
            model_id = str(model.id)
        engine.dispose()
        headers = {"Authorization": f"Bearer {self.token}"}
        streams = []
        for i in range(count):
            answer = httpx.post(
                f"{self.url}/v1/streams",
                headers=headers,
                json={
                    "name": f"load-{i}",
                    "model_id": model_id,
                    "window_size": 1000,
                    "auto_estimate": False,
                },
                timeout=30,
            )
            answer.raise_for_status()
            streams.append(answer.json()["id"])
        return streams

    def reconcile(self) -> dict[str, int]:
        from flipwatch.service.core.tables import Batch, Image

        engine = create_engine(self.database_url)
        with Session(engine) as session:
            rows = session.scalar(select(func.count()).select_from(Image)) or 0
            batches = session.scalar(select(func.count()).select_from(Batch)) or 0
        engine.dispose()
        images = self.data_dir / "images"
        incoming = self.data_dir / "incoming"
        return {
            "image_rows": rows,
            "batch_rows": batches,
            "files": sum(1 for p in images.rglob("*") if p.is_file()) if images.exists() else 0,
            "incoming_files": (
                sum(1 for p in incoming.rglob("*") if p.is_file()) if incoming.exists() else 0
            ),
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.database_url:
            name = make_url(self.database_url).database
            with psycopg.connect(_dsn(ADMIN_URL), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.root, ignore_errors=True)


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    accepted_images: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_load(
    deployment: Deployment,
    streams: list[str],
    bases: list[bytes],
    *,
    clients: int,
    duration: float,
    max_requests: int,
    batch: int,
) -> dict[str, Any]:
    tally = Tally()
    budget = iter(range(max_requests))
    budget_lock = threading.Lock()
    stop_at = time.monotonic() + duration
    headers = {"Authorization": f"Bearer {deployment.token}"}

    def client(index: int) -> None:
        stream = streams[index % len(streams)]
        with httpx.Client(base_url=deployment.url, headers=headers, timeout=120) as http:
            while time.monotonic() < stop_at:
                with budget_lock:
                    n = next(budget, None)
                if n is None:
                    return
                files = [
                    ("images", (f"{n}-{i}.jpg", unique(bases[i % len(bases)], f"{n}/{i}"), "x"))
                    for i in range(batch)
                ]
                started = time.perf_counter()
                try:
                    answer = http.post(
                        f"/v1/streams/{stream}/batches",
                        files=files,
                        headers={"Idempotency-Key": str(uuid.uuid4())},
                    )
                except httpx.TransportError as exc:
                    with tally.lock:
                        tally.errors.append(f"{type(exc).__name__}: {exc}")
                        tally.statuses["transport"] = tally.statuses.get("transport", 0) + 1
                    continue
                elapsed = time.perf_counter() - started
                with tally.lock:
                    tally.latencies.append(elapsed)
                    key = str(answer.status_code)
                    tally.statuses[key] = tally.statuses.get(key, 0) + 1
                    if answer.status_code == 202:
                        tally.accepted_images += answer.json()["image_count"]
                    elif len(tally.errors) < 5:
                        tally.errors.append(f"{answer.status_code}: {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ok = tally.statuses.get("202", 0)
    quantiles = statistics.quantiles(tally.latencies, n=100) if len(tally.latencies) > 1 else []
    return {
        "wall_s": round(wall, 2),
        "requests": len(tally.latencies) + tally.statuses.get("transport", 0),
        "accepted_requests": ok,
        "errors": sum(v for k, v in tally.statuses.items() if k != "202"),
        "statuses": tally.statuses,
        "error_samples": tally.errors,
        "requests_per_s": round(ok / wall, 2),
        "images_per_s": round(tally.accepted_images / wall, 1),
        "latency_s": {
            "p50": round(quantiles[49], 3) if quantiles else None,
            "p95": round(quantiles[94], 3) if quantiles else None,
            "p99": round(quantiles[98], 3) if quantiles else None,
            "max": round(max(tally.latencies), 3) if tally.latencies else None,
        },
        "accepted_images": tally.accepted_images,
    }


def validation_cost(bases: list[bytes], batch: int) -> float:
    """Seconds to validate one batch (`check_image` on each file) in this process, one thread."""
    from flipwatch.service.batch.service import check_image

    files = [unique(bases[i % len(bases)], f"cost/{i}") for i in range(batch)]
    started = time.perf_counter()
    for _ in range(3):
        for data in files:
            check_image(data, max_pixels=40_000_000)
    return (time.perf_counter() - started) / 3


def one_mode(mode: str, args: argparse.Namespace, bases: list[bytes]) -> dict[str, Any]:
    deployment = Deployment(validation_processes=args.processes if mode == "process" else 0)
    try:
        deployment.start()
        streams = deployment.create_streams(args.streams)
        load = run_load(
            deployment,
            streams,
            bases,
            clients=args.clients,
            duration=args.duration,
            max_requests=args.max_requests,
            batch=args.batch,
        )
        reconciliation = deployment.reconcile()
        reconciliation["consistent"] = (
            load["accepted_images"] == reconciliation["image_rows"] == reconciliation["files"]
            and reconciliation["incoming_files"] == 0
        )
        return {
            "validation": mode,
            "validation_processes": deployment.validation_processes,
            **load,
            "reconciliation": reconciliation,
        }
    finally:
        deployment.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per mode")
    parser.add_argument("--max-requests", type=int, default=600, help="request budget per mode")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--side", type=int, default=224, help="image side in pixels")
    parser.add_argument("--validation", choices=["inline", "process", "both"], default="both")
    parser.add_argument("--processes", type=int, default=2, help="pool size of `process`")
    parser.add_argument(
        "--rounds", type=int, default=1, help="with `both`: inline, process, inline, ... rounds"
    )
    args = parser.parse_args()

    bases = base_jpegs(args.batch, args.side)
    modes = ["inline", "process"] if args.validation == "both" else [args.validation]
    # Alternating rounds, so that a shared machine's drifting load slows both modes alike.
    results = [one_mode(mode, args, bases) for _ in range(args.rounds) for mode in modes]
    import PIL

    out = {
        "benchmark": "ingest_load",
        "setup": {
            "clients": args.clients,
            "streams": args.streams,
            "batch": args.batch,
            "image": f"JPEG {args.side}x{args.side}",
            "image_kib": round(statistics.mean(map(len, bases)) / 1024, 1),
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "mode": "production (flipwatch api + Postgres + Redis broker, no worker)",
        },
        "validate_batch_s": round(validation_cost(bases, args.batch), 4),
        "runs": results,
        "summary": {
            mode: {
                "rounds": len(runs),
                "median_images_per_s": statistics.median(r["images_per_s"] for r in runs),
                "median_p50_s": statistics.median(r["latency_s"]["p50"] for r in runs),
                "median_p95_s": statistics.median(r["latency_s"]["p95"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
            }
            for mode in modes
            if (runs := [r for r in results if r["validation"] == mode])
        },
        "all_consistent": all(r["reconciliation"]["consistent"] for r in results),
        "hardware": {
            "cpu_count": os.cpu_count(),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        },
        "versions": {"python": platform.python_version(), "pillow": PIL.__version__},
    }
    print(json.dumps(out, indent=2))
    return 0 if out["all_consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
