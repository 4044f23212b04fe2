"""Screenshots of the status page and a per-stream page for the README, in headless Chromium.

Builds an embedded flipwatch (SQLite in a temporary folder) seeded with a day of synthetic
estimates: a camera stream that drifts (Gaussian noise for a few hours) and recovers, with an
accuracy-floor rule, its baselines (AC equal to DoC on several windows) and realized accuracy
from labels on some windows; serves it with uvicorn on 127.0.0.1 and writes PNGs.

    .venv/bin/python deploy/screenshots.py [--out docs/img]

Needs Debian's chromium (/usr/bin/chromium). No network: the page loads only its own files.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn

from flipwatch.cli.startup import free_port
from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.core.db import make_engine, make_sessionmaker, upgrade_database
from flipwatch.service.core.logging import configure_logging
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import AlertRule, Calibration, Estimate, Model, Stream
from flipwatch.service.main import create_app
from flipwatch.workers.estimation.result import EstimateResult

CHROMIUM = "/usr/bin/chromium"
WINDOWS = 36
START = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def accuracy_at(window: int) -> float:
    """Clean around 0.95; a noise episode (windows 14-22) takes it to about 0.55."""
    dip = 0.4 * math.exp(-(((window - 18) / 3.2) ** 2))
    return round(0.95 - dip + 0.01 * math.sin(window * 1.7), 4)


def calibration_result() -> dict:
    """A calibration document shaped like Calibration.to_dict(): candidates (signal@step) with
    held-out errors, the selected map and the shifted variants it was fitted on."""
    fits = []
    for signal, base in (("uf_source", 0.021), ("wf_source", 0.026), ("uf", 0.034), ("wf", 0.048)):
        for step, extra in ((50, 0.012), (100, 0.006), (250, 0.0), (500, 0.003)):
            fits.append(
                {
                    "signal": signal,
                    "step": step,
                    "map": {"a": 1.1e-6, "b": -0.00105, "c": 0.955, "x_min": 0.0, "x_max": 460.0},
                    "mae": round(base + extra, 4),
                    "train_mae": round(base + extra - 0.004, 4),
                }
            )
    points = [{"family": "clean", "severity": 0, "mixed": False, "accuracy": 0.951,
               "signals": {"uf_source": {"250": 4.0}}, "baselines": {}}]  # fmt: skip
    families = ("gaussian_noise", "contrast", "fog", "jpeg", "pixelate", "motion_blur")
    for k, family in enumerate(families):
        for severity in range(1, 6):
            x = (40 + 18 * k) * severity + 7 * math.sin(k + severity)
            acc = 0.955 - 0.00105 * x + 1.1e-6 * x * x + 0.02 * math.sin(3 * k + severity)
            points.append({"family": family, "severity": severity, "mixed": False,
                           "accuracy": round(acc, 4), "signals": {"uf_source": {"250": x}},
                           "baselines": {}})  # fmt: skip
    return {
        "version": 1,
        "selected": "uf_source@250",
        "fits": fits,
        "points": points,
        "baseline_mae": {"ac": 0.071, "doc": 0.064, "atc": 0.052, "cot": 0.058},
    }


def seed(settings: Settings) -> tuple[list[str], str]:
    """Rows as the API and worker would leave them; returns the stream ids and the model id."""
    factory = make_sessionmaker(make_engine(settings))
    with factory() as session:
        model = Model(
            name="resnet18-cams",
            version=3,
            spec={"name": "resnet18-cams", "num_classes": 10, "format": "torchvision"},
            weights_path="/nonexistent/resnet18.pt",
            weights_sha256="0" * 64,
        )
        session.add(model)
        session.flush()
        session.add(
            Calibration(
                model_id=model.id,
                state="succeeded",
                reference_path="/nonexistent",
                reference_images=1000,
                reference_classes=[str(i) for i in range(10)],
                result=calibration_result(),
                reference_accuracy=0.95,
            )
        )
        ids = []
        for name, drift in (("gate-cams", True), ("lobby-cams", False)):
            stream = Stream(
                name=name,
                model_id=model.id,
                window_size=1000,
                steps=250,
                auto_estimate=True,
                images_total=WINDOWS * 1000,
                current_window_index=WINDOWS,
                window_fill=420,
            )
            session.add(stream)
            session.flush()
            ids.append(str(stream.id))
            session.add(
                AlertRule(
                    stream_id=stream.id,
                    name="accuracy-floor",
                    kind="accuracy_below",
                    threshold=0.8,
                    windows=2,
                    state="ok",
                    streak=0,
                    created_at=START,
                    updated_at=START,
                )
            )
            session.flush()
            for window in range(WINDOWS):
                acc = accuracy_at(window) if drift else round(0.93 + 0.01 * math.cos(window), 4)
                ac = round(min(0.99, acc + 0.12 * (1 - acc) + 0.02), 4)
                result = EstimateResult(
                    estimated_accuracy=acc,
                    signal="uf_source",
                    signal_value=round(6 + 400 * (0.95 - acc), 1),
                    calibration="calibrated",
                    calibration_mae=0.021,
                    weighted_flips=round(2 * (1 - acc), 3),
                    signals={"uf_source": {250: 6.0}},
                    baselines={
                        "ac": ac,
                        "doc": ac if window % 3 else round(ac - 0.015, 4),  # AC on DoC
                        "atc": round(min(0.985, acc + 0.05), 4),
                        "atc_ne": None,
                        "cot": round(min(0.99, acc + 0.08), 4),
                    },
                    embedding={"frechet": 1.0, "silhouette": 0.4, "centroid_shift": 0.1},
                    steps=250,
                    probe_size=1000,
                    num_images=1000,
                    seconds=14.0,
                    device="cuda:0",
                    used_fraction=0.62,
                    epsilon=0.05,
                )
                estimate = Estimate(
                    stream_id=stream.id,
                    window_index=window,
                    model_id=model.id,
                    model_version=3,
                    image_count=1000,
                    estimated_accuracy=acc,
                    signal="uf_source@250",
                    weighted_flips=result.weighted_flips,
                    result=result.to_dict(),
                    created_at=START + timedelta(minutes=40 * window),
                )
                if window % 4 == 1:  # labels arrived for every fourth window
                    estimate.labeled_count = 200
                    estimate.realized_accuracy = round(acc - 0.02 + 0.01 * (window % 3), 3)
                    estimate.realized_at = estimate.created_at + timedelta(hours=2)
                session.add(estimate)
                session.flush()
                evaluate_alerts(session, estimate)
        session.commit()
        return ids, str(model.id)


def screenshot(url: str, path: Path, *, height: int) -> None:
    profile = tempfile.mkdtemp(prefix="flipwatch-shot-")
    try:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}",
                f"--window-size=1280,{height}",
                "--virtual-time-budget=5000",
                f"--screenshot={path}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM}: apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flipwatch-shots-") as tmp:
        settings = Settings(
            environment="dev",
            data_dir=Path(tmp),
            public_status_page=True,
            webhook_poll_seconds=0,
            log_format="console",
        )
        configure_logging("warning", "console")
        upgrade_database(settings)
        stream_ids, model_id = seed(settings)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            base = f"http://127.0.0.1:{port}"
            shots = {
                "status-page.png": (base + "/", 1250),
                "status-stream.png": (f"{base}/streams/{stream_ids[0]}", 1300),
                "status-calibration.png": (f"{base}/models/{model_id}/calibration", 1150),
            }
            for name, (url, height) in shots.items():
                screenshot(url, args.out / name, height=height)
                print(f"wrote {args.out / name}")
        finally:
            server.should_exit = True
            thread.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
