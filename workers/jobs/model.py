"""The model a job runs: a model row's spec and cache key, then the loaded model on its device.

Shared by the estimate and the calibrate job. The estimator (and torch) is imported when a job
runs, never when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Model
from flipwatch.workers.jobs.lifecycle import JobMetrics
from flipwatch.workers.model_cache import ModelCache, ModelKey
from flipwatch.workers.objects import weights_cache

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flipwatch.workers.estimation.spec import ModelSpec


def spec_and_key(model_row: Model) -> tuple[ModelSpec, ModelKey]:
    """The estimator's spec of a model row and its cache key (id, version, weights sha256)."""
    from flipwatch.workers.estimation.spec import ModelSpec

    spec = ModelSpec.model_validate(model_row.spec)
    return spec, ModelKey(model_row.id, model_row.version, model_row.weights_sha256)


def load_job_model(
    kind: str,
    spec: ModelSpec,
    key: ModelKey,
    *,
    model_cache: ModelCache,
    settings: Settings,
    metrics: JobMetrics | None,
) -> tuple[nn.Module, torch.device]:
    """The cached (or newly loaded) model and the configured device; tells `metrics` that a job
    of `kind` starts its work there. On a miss the weights come from the store through the local
    weights cache (by digest)."""
    from flipwatch.workers.estimation import resolve_device

    def local_weights(stored: ModelSpec) -> ModelSpec:
        if stored.weights is None:
            return stored
        path = weights_cache(settings).path(stored.weights, key.weights_sha256)
        return stored.model_copy(update={"weights": str(path)})

    model = model_cache.get(key, spec, resolve=local_weights)
    device = resolve_device(settings.device)
    if metrics is not None:
        metrics.job_started(kind, str(device))
    return model, device
