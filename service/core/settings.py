"""flipwatch configuration: one Settings object, read from FLIPWATCH_* environment variables.

Built once by the entry point (`flipwatch/cli/`) and passed to `create_app`, the worker and
`migrations/env.py`; no other module reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flipwatch.service.core.dispatch import JOB_QUEUES
from flipwatch.workers.estimation.families import (
    DEFAULT_CLASS_MIXES,
    DEFAULT_SEVERITIES,
    ClassMixes,
)

MiB = 1024 * 1024
GiB = 1024 * MiB

PLACEHOLDER_SECRETS = frozenset({"changethis", "changeme", "secret", "admin", "password"})


class Settings(BaseSettings):
    """Every knob of the service, API and worker alike."""

    model_config = SettingsConfigDict(env_prefix="FLIPWATCH_", extra="ignore")

    environment: Literal["dev", "prod"] = "dev"
    data_dir: Path = Field(default=Path(".flipwatch"), description="Images, weights, SQLite file.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means SQLite in data_dir (embedded mode)."
    )
    redis_url: str | None = Field(
        default=None, description="Dramatiq broker; unset means embedded mode (no Redis)."
    )
    device: str = "auto"
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for the estimator (default: torch's, one per core). Small "
        "models or shared CPUs run much faster with 1 (OpenMP oversubscription).",
    )
    fast_path: bool = Field(
        default=True,
        description="The estimator's fast path (grouped BN, on-device steps, per-device plan); "
        "false runs the plain reference loop (like `flipwatch estimate --plain`).",
    )
    jobs_per_device: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Jobs a worker runs at once on its device (threads). On a GPU, several "
        "streams share it; a job waits while the device lacks the memory its model needed last "
        "time.",
    )
    prefetch_windows: bool = Field(
        default=True,
        description="While one estimate adapts, decode the window of the next queued estimate.",
    )

    # Object storage (service/core/storage.py): images, weights and reference sets.
    storage_backend: Literal["local", "s3"] = Field(
        default="local",
        description="'local': files under data_dir (one host, embedded); 's3': an "
        "S3-compatible bucket shared by API and workers on any host.",
    )
    storage_bucket: str | None = Field(default=None, description="The bucket (backend s3).")
    storage_prefix: str = Field(
        default="", description="Key prefix inside the bucket, '' or ending in '/'."
    )
    storage_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint (MinIO, rclone, Ceph, R2...); unset means AWS for the region.",
    )
    storage_region: str = "us-east-1"
    storage_access_key_id: str | None = Field(
        default=None, description="Unset: boto3's own chain (AWS_* variables, instance role)."
    )
    storage_secret_access_key: str | None = Field(default=None, repr=False)
    storage_addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path", description="'path' suits MinIO and most S3-compatible servers."
    )
    storage_cache_dir: Path | None = Field(
        default=None,
        description="Worker cache of model weights (by digest) and reference sets fetched from "
        "the bucket; unset means data_dir/cache.",
    )
    storage_cache_bytes: int = Field(
        default=20 * GiB, ge=1, description="Bound of the worker's weights cache."
    )
    storage_threads: int = Field(
        default=16, ge=1, le=256, description="Concurrent object reads/writes of one window."
    )
    storage_max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="S3 calls per request, the first included (boto3's standard retries with "
        "backoff): connection errors, timeouts, throttling and 5xx answers are retried.",
    )
    storage_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="S3: to open a connection (an unreachable host)."
    )
    storage_read_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="S3: the longest wait for the next bytes of an answer (a hung server); not "
        "a bound on a whole transfer.",
    )

    # Queues by capability (service/core/dispatch.py): estimates.gpu, estimates.cpu, calibrations.
    worker_queues: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Queues `flipwatch worker` consumes, comma-separated (e.g. "
        "estimates.cpu,calibrations); unset: all of estimates.gpu, estimates.cpu, calibrations. "
        "`flipwatch worker --queues` overrides it.",
    )
    estimate_device: Literal["gpu", "cpu"] = Field(
        default="gpu",
        description="Queue of a new estimate job, estimates.<device>, for models not named in "
        "model_devices. Decided when the job is created and stored on it.",
    )
    model_devices: dict[str, Literal["gpu", "cpu"]] = Field(
        default_factory=dict,
        description='JSON object, model name -> "gpu" or "cpu": the estimate queue of that '
        'model\'s jobs, e.g. {"mnist_cnn": "cpu"} keeps small models off the GPU hosts.',
    )
    database_pool_size: int = Field(
        default=5,
        ge=1,
        le=200,
        description="Postgres connections kept open per process (SQLAlchemy pool_size); size it "
        "so replicas x (pool_size + max_overflow) fits PgBouncer's or Postgres's limit.",
    )
    database_max_overflow: int = Field(
        default=5, ge=0, le=200, description="Extra connections a process may open under load."
    )

    # Ingest limits (per file, per batch, decompression-bomb guard).
    max_file_bytes: int = Field(default=10 * MiB, ge=1)
    max_batch_files: int = Field(default=512, ge=1)
    max_batch_bytes: int = Field(default=200 * MiB, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    validation_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Decode uploaded images in this many spawned processes instead of the "
        "request's thread; 0 (default, measured by benchmarks/ingest_load.py): in the thread.",
    )
    max_batch_pixels: int = Field(
        default=400_000_000,
        ge=1,
        description="Decode budget: the pixels (width x height x frames, read from headers "
        "before decoding) one batch may decode in all; bounds the API's CPU per request.",
    )

    # Calibration archive limits (zip/tar of an ImageFolder tree).
    max_archive_entries: int = Field(default=100_000, ge=1)
    max_archive_bytes: int = Field(default=2 * GiB, ge=1, description="The uploaded archive.")
    max_archive_unpacked_bytes: int = Field(
        default=4 * GiB, ge=1, description="All extracted files together (zip-bomb guard)."
    )
    max_archive_ratio: float = Field(
        default=200.0,
        gt=1,
        description="Largest unpacked/packed size ratio of one zip entry (images barely "
        "compress; a bomb compresses 1000:1).",
    )
    max_weights_bytes: int = Field(default=1 * GiB, ge=1, description="One weights upload.")

    # HTTP edges.
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Request line and headers; larger gets 431."
    )
    public_docs: bool | None = Field(
        default=None,
        description="Serve /docs, /redoc and /openapi.json without an API key; unset means "
        "true in dev, false in prod (then any valid key is needed).",
    )
    retry_after_seconds: int = Field(
        default=5, ge=1, le=3600, description="Retry-After of a 503 (database or broker down)."
    )
    database_connect_timeout_seconds: int = Field(
        default=5, ge=1, le=120, description="Postgres connect timeout (an unreachable host)."
    )

    # Job recovery (workers/main.py reconciler): a lost job comes back within about
    # job_stale_seconds + reconcile_interval_seconds (dead worker) or job_lost_seconds +
    # reconcile_interval_seconds (message lost with Redis): 40 s with the defaults.
    job_heartbeat_seconds: float = Field(
        default=5.0, gt=0, le=300, description="How often a running job proves it is alive."
    )
    job_stale_seconds: float = Field(
        default=30.0, gt=0, description="A running job silent this long lost its worker."
    )
    job_lost_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A queued job untouched this long, with no message in Redis, is re-sent.",
    )
    reconcile_interval_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How often each worker looks for lost jobs."
    )

    # Maintenance (service/retention/service.py): retention and orphan sweeps in the API process.
    maintenance_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How often retention and the orphan sweep run; 0: never (the start-up sweep "
        "of interrupted uploads still runs once, in the background).",
    )
    orphan_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description="Upload leftovers (data_dir/incoming) and unreferenced image files older "
        "than this are removed; longer than any upload takes.",
    )

    # Stream window policy defaults.
    default_window_size: int = Field(default=1000, ge=64)
    default_steps: int = Field(default=250, ge=1)

    # Calibration suite: corruption families (unset: all 17) x severities (default 2, 3 and 4,
    # the measured default suite, families.DEFAULT_SEVERITIES), optionally plus a half-corrupted mix
    # per family, more class-mix variants and the learning-rate grid.
    calibration_families: list[str] | None = Field(
        default=None, description='JSON list, e.g. ["gaussian_noise","contrast","fog"]'
    )
    calibration_severities: list[int] = Field(default=list(DEFAULT_SEVERITIES), min_length=1)
    calibration_mixes: bool = Field(
        default=False, description="Add a half-corrupted mix per family to the suite."
    )
    calibration_class_mixes: ClassMixes = Field(
        default=DEFAULT_CLASS_MIXES,
        description="Skewed class-mix variants: the clean set in each skewed kind and each family "
        "at its middle severity in one (all), the clean set only (clean), or none.",
    )
    calibration_lr_grid: bool = Field(
        default=False,
        description="Also measure every variant under the learning-rate/batch grid (lr 2e-3 with "
        "batches of 64 and 16): 2.25x the trajectory cost, no measured gain on the benchmarks.",
    )
    calibration_processes: int = Field(
        default=1,
        ge=1,
        description="CPU only: measure calibration variants in this many single-threaded "
        "processes (about linear speed-up for small models). CUDA workers ignore it.",
    )

    model_builders: dict[str, str] = Field(
        default_factory=dict,
        description='JSON object of extra `entrypoint` builders, name -> "module:function", e.g. '
        '{"my_resnet": "mypkg.nets:build"}. Only this setting is ever imported; a registered '
        "spec names a builder. The zoo's (mnist_cnn, tiny, efficientnet_lite0) are always there.",
    )

    bootstrap_admin_key: str | None = Field(
        default=None,
        description="An admin token accepted at start-up (created if missing); for first contact.",
    )

    # The status page at GET / (and its data, GET /v1/status).
    public_status_page: bool | None = Field(
        default=None,
        description="Serve the status page without an API key; unset means true in dev, "
        "false in prod (then a read key is needed: ?key=, cookie or bearer header).",
    )

    # Realized accuracy from labels posted later (POST /v1/streams/{id}/labels).
    realized_min_labels: int = Field(
        default=50,
        ge=1,
        description="Labeled images a window needs before its realized accuracy is computed.",
    )
    estimator_error_windows: int = Field(
        default=10,
        ge=1,
        description="The estimator's running error on a stream: mean |estimated - realized| "
        "over this many most recent windows with a realized accuracy.",
    )

    # Logs: one JSON object per line (json) or key=value lines for a terminal (console).
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Optional OpenTelemetry tracing (the `otel` extra): off unless an endpoint is set.
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (e.g. http://otel-collector:4318/v1/traces); unset: "
        "no tracing.",
    )
    otel_service_name: str = Field(default="flipwatch", description="service.name of the spans.")

    # Prometheus metrics of the API process.
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve the API's /metrics on this port only (an internal port Prometheus "
        "scrapes over a private network) instead of on the public API port; unset: on the API "
        "port, without a key.",
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="Address the metrics_port server listens on."
    )

    # Alert webhooks (service/alert/webhooks.py): an outbox delivered by an API process thread.
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles per attempt."
    )
    webhook_backoff_max_seconds: float = Field(default=600.0, ge=0)
    webhook_poll_seconds: float = Field(
        default=2.0, ge=0, description="How often the API looks for due webhooks; 0 turns it off."
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Signs webhook bodies: X-Flipwatch-Signature: sha256=<hex HMAC of the body>.",
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="JSON list of CIDRs webhooks may reach although they are loopback, private "
        'or link-local, e.g. ["10.20.0.0/16"]; by default only public addresses are allowed.',
    )

    @field_validator("worker_queues", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("["):
            import json

            return json.loads(value)  # a JSON list works too
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("worker_queues")
    @classmethod
    def _queues_are_known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [queue for queue in value if queue not in JOB_QUEUES]
        if unknown or not value:
            raise ValueError(
                f"unknown worker queue(s) {unknown or value}: choose from {', '.join(JOB_QUEUES)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks_are_cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @model_validator(mode="after")
    def _check_recovery_timers(self) -> Settings:
        if self.job_stale_seconds < 3 * self.job_heartbeat_seconds:
            raise ValueError(
                f"FLIPWATCH_JOB_STALE_SECONDS ({self.job_stale_seconds}) must be at least three "
                f"heartbeats (3 x FLIPWATCH_JOB_HEARTBEAT_SECONDS = "
                f"{3 * self.job_heartbeat_seconds}), or live jobs would be taken from their worker"
            )
        return self

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage_backend == "s3" and not self.storage_bucket:
            raise ValueError("FLIPWATCH_STORAGE_BACKEND=s3 needs FLIPWATCH_STORAGE_BUCKET")
        prefix = self.storage_prefix
        if prefix and (not prefix.endswith("/") or prefix.startswith("/") or ".." in prefix):
            raise ValueError(
                f"FLIPWATCH_STORAGE_PREFIX {prefix!r} must be '' or a relative path ending in '/'"
            )
        return self

    @property
    def effective_cache_dir(self) -> Path:
        """The worker's local cache: FLIPWATCH_STORAGE_CACHE_DIR, or data_dir/cache."""
        return self.storage_cache_dir or Path(self.data_dir) / "cache"

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        key = self.bootstrap_admin_key
        if self.environment != "dev" and key is not None:
            if key.lower() in PLACEHOLDER_SECRETS or len(key) < 32:
                raise ValueError(
                    "FLIPWATCH_BOOTSTRAP_ADMIN_KEY is a placeholder or shorter than 32 characters; "
                    "generate one with `flipwatch api-key create --role admin` instead"
                )
        secret = self.webhook_secret
        if self.environment != "dev" and secret is not None:
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < 32:
                raise ValueError(
                    "FLIPWATCH_WEBHOOK_SECRET is a placeholder or shorter than 32 characters; "
                    "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
                )
        return self

    @property
    def effective_database_url(self) -> str:
        """The URL actually used: FLIPWATCH_DATABASE_URL, or SQLite under data_dir."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{self.data_dir / 'flipwatch.db'}"

    @property
    def status_page_is_public(self) -> bool:
        """FLIPWATCH_PUBLIC_STATUS_PAGE when set; else public in dev only."""
        if self.public_status_page is not None:
            return self.public_status_page
        return self.environment == "dev"

    @property
    def docs_are_public(self) -> bool:
        """FLIPWATCH_PUBLIC_DOCS when set; else public in dev only."""
        if self.public_docs is not None:
            return self.public_docs
        return self.environment == "dev"

    @property
    def consumed_queues(self) -> tuple[str, ...]:
        """The queues a `flipwatch worker` takes jobs from: worker_queues, or all of them."""
        return tuple(self.worker_queues) if self.worker_queues else JOB_QUEUES

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: jobs run in-process."""
        return self.redis_url is None


def normalize_database_url(url: str) -> str:
    """Make plain `postgresql://` URLs use psycopg 3 (the only Postgres driver installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
