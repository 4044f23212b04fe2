"""Scrape cost of GET /metrics on Postgres with thousands of streams and a million estimates.

For each stream count (default 1,000 and 10,000) this creates a fresh Postgres database, migrates
it to the last revision whose schema the loader knows (`BASE_REVISION`), bulk-loads realistic rows
with COPY (models, succeeded calibrations, streams, one succeeded job per estimate plus queued,
running and failed ones, calibration jobs, two alert rules per stream, alert events, and
`--estimates` estimate rows spread evenly over the streams, each with a full
`EstimateResult.to_dict()` document and a realized accuracy on every `--labeled-every`th window,
default every tenth), then runs
`alembic upgrade head` (so whatever later migrations backfill is timed as `upgrade_s`), ANALYZE,
and scrapes the real app served by uvicorn on loopback with httpx (which, like Prometheus, accepts
gzip): one warm-up scrape, then `--scrapes` timed ones (p50/p95/max wall seconds, median process
CPU seconds), the body size in bytes (decoded, and on the wire) and the number of series (sample
lines). The database is dropped at the end, also on failure.

Run the same script on an older checkout to get its "before" figures: it only needs
`BASE_REVISION` to be an ancestor of the head.

    nice -n 10 .venv/bin/python benchmarks/metrics_scrape.py [--streams 1000,10000]
        [--estimates 1000000] [--labeled-every 10] [--scrapes 7]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Prints ONE JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import cpu_name  # noqa: E402
from flipwatch.cli.startup import free_port  # noqa: E402
from flipwatch.service.core.db import upgrade_database  # noqa: E402
from flipwatch.service.core.logging import configure_logging  # noqa: E402
from flipwatch.service.core.settings import Settings  # noqa: E402
from flipwatch.service.main import create_app  # noqa: E402

# The loader writes the columns of this revision (realized accuracy, job request id); any head
# that descends from it can be benchmarked.
BASE_REVISION = "5e7a1c2b9d30"
SIGNALS = ("uf_source", "wf", "uf", "agreement")
CHECKPOINTS = (0, 50, 100, 250)
BASELINES = ("ac", "doc", "atc", "atc_ne", "cot")
NUM_CLASSES = 10
WINDOW_SIZE = 1000
START = datetime(2026, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1000,10000")
    parser.add_argument("--estimates", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=7)
    parser.add_argument(
        "--labeled-every",
        type=int,
        default=10,
        help="windows per labeled window (1: every window has labels)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "FLIPWATCH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    configure_logging("warning", "console")  # on stderr: stdout carries only the JSON
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for streams in (int(s) for s in args.streams.split(",")):
        runs.append(
            measure(
                admin_url=args.admin_url,
                streams=streams,
                estimates=args.estimates,
                labeled_every=args.labeled_every,
                scrapes=args.scrapes,
            )
        )
    facts = {"load_average_at_start": load_at_start, **environment(args)}
    print(json.dumps({"benchmark": "metrics_scrape", "runs": runs, **facts}, indent=2))


def measure(
    *, admin_url: str, streams: int, estimates: int, labeled_every: int, scrapes: int
) -> dict[str, Any]:
    name = f"flipwatch_bench_scrape_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    url = "postgresql+psycopg://" + dsn_to_url_tail(dsn)
    try:
        settings = bench_settings(url, Path(tempfile.mkdtemp(prefix="flipwatch-bench-")))
        started = time.perf_counter()
        upgrade_database(settings, url=url, revision=BASE_REVISION)
        rows = load(dsn, streams=streams, estimates=estimates, labeled_every=labeled_every)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        upgrade_database(settings, url=url)
        upgrade_s = time.perf_counter() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        figures = scrape(settings, scrapes=scrapes)
        return {
            "streams": streams,
            "estimates": estimates,
            "labeled_every": labeled_every,
            "rows": rows,
            "database_bytes": size,
            "load_s": round(load_s, 1),
            "upgrade_s": round(upgrade_s, 2),
            **figures,
        }
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dsn_to_url_tail(dsn: str) -> str:
    """user@host:port/dbname from a libpq conninfo (trust auth: no password)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = info.get("user", "postgres")
    return f"{user}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{info['dbname']}"


def bench_settings(url: str, data_dir: Path) -> Settings:
    """The API as deployed, minus the background threads that would compete with the scrape."""
    return Settings(
        environment="dev",
        database_url=url,
        redis_url=None,
        data_dir=data_dir,
        webhook_poll_seconds=0,
        maintenance_interval_seconds=0,
        bootstrap_admin_key=None,
    )


# --- data ----------------------------------------------------------------------------------------


def load(dsn: str, *, streams: int, estimates: int, labeled_every: int = 10) -> dict[str, int]:
    """COPY every table; foreign keys are consistent by construction, so their per-row triggers
    are skipped (session_replication_role = replica) to keep a million rows under a minute."""
    rng = random.Random(13)
    models = max(1, streams // 20)
    model_ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(models)]
    stream_ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(streams)]
    per_stream = estimates // streams
    counts: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        counts["models"] = copy(
            conn,
            "models (id, name, version, spec, weights_path, weights_sha256, created_at)",
            (
                (
                    m,
                    f"model-{i // 3:04d}",
                    i % 3 + 1,
                    json.dumps({"name": f"model-{i // 3:04d}", "num_classes": NUM_CLASSES}),
                    f"/data/models/{m.hex}.pt",
                    m.hex + m.hex,
                    START,
                )
                for i, m in enumerate(model_ids)
            ),
        )
        calibration_jobs = [uuid.UUID(int=rng.getrandbits(128)) for _ in model_ids]
        counts["calibrations"] = copy(
            conn,
            "calibrations (id, model_id, job_id, state, reference_path, reference_images, "
            "reference_classes, options, result, reference_accuracy, created_at, finished_at)",
            (
                (
                    uuid.UUID(int=rng.getrandbits(128)),
                    m,
                    j,
                    "succeeded",
                    "/data/references/x",
                    5000,
                    json.dumps([f"c{k}" for k in range(NUM_CLASSES)]),
                    "{}",
                    json.dumps({"selected": "uf_source@250", "mae": 0.021}),
                    0.93,
                    START,
                    START,
                )
                for m, j in zip(model_ids, calibration_jobs, strict=True)
            ),
        )
        counts["streams"] = copy(
            conn,
            "streams (id, name, model_id, window_size, steps, auto_estimate, created_at, "
            "images_total, current_window_index, window_fill)",
            (
                (
                    s,
                    f"stream-{i:05d}",
                    model_ids[i % models],
                    WINDOW_SIZE,
                    250,
                    True,
                    START,
                    per_stream * WINDOW_SIZE + 317,
                    per_stream,
                    317,
                )
                for i, s in enumerate(stream_ids)
            ),
        )
        job_ids: list[uuid.UUID] = []
        estimate_ids: list[uuid.UUID] = []
        counts["jobs"] = copy(
            conn,
            "jobs (id, kind, state, stream_id, model_id, window_index, attempts, max_attempts, "
            "steps_done, steps_total, created_at, started_at, finished_at, worker)",
            jobs(rng, stream_ids, model_ids, per_stream, calibration_jobs, job_ids),
        )
        counts["estimates"] = copy_text(
            conn,
            "estimates (id, stream_id, job_id, window_index, model_id, model_version, "
            "image_count, estimated_accuracy, signal, weighted_flips, result, created_at, "
            "labeled_count, realized_accuracy, realized_at)",
            estimate_lines(
                rng, stream_ids, model_ids, per_stream, job_ids, estimate_ids, labeled_every
            ),
        )
        rule_ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(2 * streams)]
        counts["alert_rules"] = copy(
            conn,
            "alert_rules (id, stream_id, name, kind, threshold, windows, state, streak, "
            "last_window_index, last_value, changed_at, created_at, updated_at)",
            (
                (
                    rule_ids[2 * i + k],
                    s,
                    ("floor", "drop")[k],
                    ("accuracy_below", "drop_below_reference")[k],
                    (0.8, 5.0)[k],
                    3,
                    "firing" if (i * 7 + k) % 33 == 0 else "ok",
                    0,
                    per_stream - 1,
                    0.85,
                    START,
                    START,
                    START,
                )
                for i, s in enumerate(stream_ids)
                for k in (0, 1)
            ),
        )
        counts["alert_events"] = copy(
            conn,
            "alert_events (id, stream_id, rule_id, rule_name, kind, state, estimate_id, "
            "window_index, value, threshold, message, created_at)",
            (
                (
                    uuid.UUID(int=rng.getrandbits(128)),
                    s,
                    rule_ids[2 * i],
                    "floor",
                    "accuracy_below",
                    state,
                    estimate_ids[i * per_stream + w],
                    w,
                    0.78,
                    0.8,
                    f"estimated accuracy 0.78 below 0.8 for 3 windows ({state})",
                    START + timedelta(hours=w),
                )
                for i, s in enumerate(stream_ids)
                for w, state in ((per_stream // 3, "firing"), (per_stream // 2, "resolved"))
            ),
        )
        conn.commit()
    return counts


def jobs(
    rng: random.Random,
    stream_ids: list[uuid.UUID],
    model_ids: list[uuid.UUID],
    per_stream: int,
    calibration_jobs: list[uuid.UUID],
    job_ids: list[uuid.UUID],
) -> Iterator[tuple[Any, ...]]:
    """One succeeded job per estimate (ids collected in `job_ids`), a queued one for the open
    window of every 20th stream, a running one for every 50th, a failed one for every 100th;
    one succeeded calibration job per model (no stream)."""
    models = len(model_ids)
    for i, s in enumerate(stream_ids):
        model = model_ids[i % models]
        for w in range(per_stream):
            job = uuid.UUID(int=rng.getrandbits(128))
            job_ids.append(job)
            at = START + timedelta(hours=w, seconds=i)
            yield (job, "estimate", "succeeded", s, model, w, 1, 3, 250, 250, at, at, at, "w:1")
        for every, state in ((20, "queued"), (50, "running"), (100, "failed")):
            if i % every == 0:
                at = START + timedelta(hours=per_stream, seconds=i)
                yield (uuid.UUID(int=rng.getrandbits(128)), "estimate", state, s, model,
                       per_stream, 1, 3, 0, 250, at, at, None, "w:2")  # fmt: skip
    for m, j in zip(model_ids, calibration_jobs, strict=True):
        yield (j, "calibrate", "succeeded", None, m, None, 1, 3, 20, 20, START, START, START, "w:1")


def estimate_lines(
    rng: random.Random,
    stream_ids: list[uuid.UUID],
    model_ids: list[uuid.UUID],
    per_stream: int,
    job_ids: list[uuid.UUID],
    estimate_ids: list[uuid.UUID],
    labeled_every: int = 10,
) -> Iterator[str]:
    """COPY text lines; the result document is `EstimateResult.to_dict()` for a 10-class model
    (about 1.3 kB, like the demo's). Each stream has 4 documents whose accuracy, interval and
    flips vary per row (a template filled in, so a million rows take seconds, not minutes)."""
    models = len(model_ids)
    n = 0
    for i, s in enumerate(stream_ids):
        model = model_ids[i % models]
        version = i % models % 3 + 1
        base = 0.75 + 0.2 * rng.random()
        templates = [result_template(rng, w) for w in range(4)]
        for w in range(per_stream):
            estimate = uuid.UUID(int=rng.getrandbits(128))
            estimate_ids.append(estimate)
            accuracy = round(base + 0.03 * math.sin(w / 7 + i), 4)
            flips = round(0.3 * rng.random(), 6)
            result = templates[w % 4] % {
                "a": accuracy,
                "l": round(accuracy - 0.05, 4),
                "u": round(min(1.0, accuracy + 0.05), 4),
                "f": flips,
            }
            at = (START + timedelta(hours=w, seconds=i)).isoformat()
            realized = "\\N\t\\N"
            labeled = 0
            if w % labeled_every == 0:
                labeled = 100
                realized = f"{round(accuracy + rng.uniform(-0.04, 0.04), 4)}\t{at}"
            yield (
                f"{estimate}\t{s}\t{job_ids[n]}\t{w}\t{model}\t{version}\t{WINDOW_SIZE}\t"
                f"{accuracy}\tuf_source@250\t{flips}\t{result}\t{at}\t{labeled}\t{realized}\n"
            )
            n += 1


def result_template(rng: random.Random, window: int) -> str:
    """A result document as JSON text with %(a)s (accuracy), %(l)s, %(u)s (interval) and %(f)s
    (weighted flips) left to fill in."""
    doc = result_document(rng, 0.0, window)
    doc |= {"estimated_accuracy": "@a@", "lower": "@l@", "upper": "@u@", "weighted_flips": "@f@"}
    text = json.dumps(doc)
    for key in "aluf":
        text = text.replace(f'"@{key}@"', f"%({key})s")
    return text


def result_document(rng: random.Random, accuracy: float, window: int) -> dict[str, Any]:
    proportions = [rng.random() for _ in range(NUM_CLASSES)]
    total = sum(proportions)
    r = round
    return {
        "estimated_accuracy": accuracy,
        "signal": "uf_source@250",
        "signal_value": r(rng.uniform(0.0, 0.2), 6),
        "calibration": "linear",
        "calibration_mae": 0.021,
        "weighted_flips": r(rng.uniform(0.0, 0.3), 6),
        "signals": {s: {str(c): r(rng.random(), 6) for c in CHECKPOINTS} for s in SIGNALS},
        "baselines": {b: r(accuracy + rng.uniform(-0.05, 0.05), 6) for b in BASELINES},
        "embedding": {
            "frechet": r(rng.uniform(1, 10), 6),
            "silhouette": r(rng.random(), 6),
            "centroid_shift": r(rng.random(), 6) if window % 5 else None,
        },
        "steps": 250,
        "probe_size": 1000,
        "num_images": WINDOW_SIZE,
        "seconds": r(rng.uniform(20, 40), 3),
        "device": "cuda:0",
        "used_fraction": r(rng.uniform(0.3, 0.9), 6),
        "epsilon": 0.4,
        "warnings": [],
        "lower": r(accuracy - 0.05, 6),
        "upper": r(min(1.0, accuracy + 0.05), 6),
        "interval_level": 0.9,
        "estimator": "fit:uf_source@250",
        "estimator_inputs": {"uf_source@250": r(rng.random(), 6)},
        "class_proportions": [r(p / total, 6) for p in proportions],
        "reference_class_proportions": [r(1 / NUM_CLASSES, 6)] * NUM_CLASSES,
        "label_shift": r(rng.uniform(0, 0.3), 6),
    }


def copy(conn: psycopg.Connection, target: str, rows: Iterator[tuple[Any, ...]]) -> int:
    n = 0
    with conn.cursor().copy(f"COPY {target} FROM STDIN") as out:
        for row in rows:
            out.write_row(row)
            n += 1
    return n


def copy_text(conn: psycopg.Connection, target: str, lines: Iterator[str]) -> int:
    """COPY pre-formatted text lines in 8 MB chunks (write_row would convert each value)."""
    n = 0
    buffer = io.StringIO()
    with conn.cursor().copy(f"COPY {target} FROM STDIN") as out:
        for line in lines:
            buffer.write(line)
            n += 1
            if buffer.tell() > 8 << 20:
                out.write(buffer.getvalue())
                buffer = io.StringIO()
        out.write(buffer.getvalue())
    return n


# --- scrape --------------------------------------------------------------------------------------


def scrape(settings: Settings, *, scrapes: int) -> dict[str, Any]:
    """GET /metrics from uvicorn on loopback: a warm-up, then `scrapes` timed requests."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        seconds, cpu = [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            body = client.get("/metrics").content  # warm-up: connection pool, first queries
            for _ in range(scrapes):
                started, cpu_started = time.perf_counter(), time.process_time()
                response = client.get("/metrics")
                seconds.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
                response.raise_for_status()
                body = response.content
                wire = response.num_bytes_downloaded  # gzipped when the server gzips
    finally:
        server.should_exit = True
        thread.join(30)
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    per_family: dict[str, int] = {}
    for line in lines:
        family = line.split("{", 1)[0].split(" ", 1)[0]
        per_family[family] = per_family.get(family, 0) + 1
    if b"flipwatch_database_up 1.0" not in body:
        raise RuntimeError("the scrape could not read the database")
    seconds.sort()
    return {
        "scrape_p50_s": round(statistics.median(seconds), 3),
        "scrape_p95_s": round(
            seconds[min(len(seconds) - 1, math.ceil(0.95 * len(seconds)) - 1)], 3
        ),
        "scrape_max_s": round(seconds[-1], 3),
        # CPU seconds of this process (the API serving the scrape, plus the client reading it):
        # steadier than wall time on a shared machine; Postgres's own CPU is not in it.
        "scrape_process_cpu_p50_s": round(statistics.median(cpu), 3),
        "scrapes": len(seconds),
        "response_bytes": len(body),
        "response_wire_bytes": wire,  # httpx asks for gzip, as Prometheus does
        "series": len(lines),
        "series_per_family": dict(sorted(per_family.items())),
    }


# --- facts ---------------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    with psycopg.connect(args.admin_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout.strip()
    return {
        "git_commit": commit,
        "postgres": server,
        "python": platform.python_version(),
        "packages": {
            p: metadata.version(p)
            for p in ("sqlalchemy", "psycopg", "prometheus-client", "fastapi", "uvicorn", "httpx")
        },
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    main()
