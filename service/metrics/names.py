"""The one list of metric family names flipwatch exports (API and worker) and the stream labels.

tests/test_deploy.py checks the dashboards and alert rules against `EXPORTED_METRICS`. Labels are
`stream`, `model`, `model_version` plus the one a family names (`method`, `kind`, `rule`, `state`);
never ids of jobs or batches, so cardinality stays bounded by streams x rules.
"""

from __future__ import annotations

# Per stream, from the database (collector.py's DatabaseCollector).
STREAM_METRICS: tuple[str, ...] = (
    "flipwatch_estimated_accuracy_ratio",
    "flipwatch_weighted_flips",
    "flipwatch_baseline_accuracy_ratio",  # {method}
    "flipwatch_embedding_distance",  # {kind}
    "flipwatch_drift_alert",  # {rule}: 1 firing, 0 not
    "flipwatch_last_estimate_timestamp_seconds",
    "flipwatch_images_ingested_total",
    "flipwatch_jobs",  # {state}
)
# The API process (http.py's ApiMetrics).
API_METRICS: tuple[str, ...] = (
    "flipwatch_http_requests_total",  # {method, route, status}
    "flipwatch_http_request_duration_seconds",  # histogram {method, route}
    "flipwatch_database_up",  # 1 when the scrape-time queries succeeded
)
# The worker process (:9191), defined by the worker side; listed here so there is one list.
WORKER_METRICS: tuple[str, ...] = (
    "flipwatch_estimate_duration_seconds",  # histogram
    "flipwatch_estimate_images_per_second",
    "flipwatch_worker_cuda_peak_memory_bytes",
    "flipwatch_worker_up",
)
EXPORTED_METRICS: frozenset[str] = frozenset(STREAM_METRICS + API_METRICS + WORKER_METRICS)

STREAM_LABELS = ("stream", "model", "model_version")
