"""Loaded models, kept between jobs: loading weights costs seconds, a window's estimate may not.

Keyed by (model id, version, weights sha256), so a re-registered model (a new version, or the same
version with other weights) is never served from a stale entry. The estimator adapts a deep copy,
so one cached module can serve every job.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from torch import nn

    from flipwatch.workers.estimation.spec import ModelSpec

log = logging.getLogger(__name__)

Loader = Callable[["ModelSpec"], "nn.Module"]


class ModelKey(NamedTuple):
    model_id: uuid.UUID
    version: int
    weights_sha256: str


class ModelCache:
    """A thread-safe LRU of loaded models; `get` loads on a miss (once, even when racing)."""

    def __init__(
        self,
        max_models: int = 4,
        *,
        loader: Loader | None = None,
        builders: Mapping[str, str] | None = None,
    ) -> None:
        """`builders`: operator-enabled `entrypoint` builders (FLIPWATCH_MODEL_BUILDERS)."""
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.max_models = max_models
        self._loader = loader
        self._builder_paths = dict(builders or {})
        self._models: OrderedDict[ModelKey, nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        key: ModelKey,
        spec: ModelSpec,
        *,
        resolve: Callable[[ModelSpec], ModelSpec] | None = None,
    ) -> nn.Module:
        """The model for `key`, loaded from `spec` on a miss; ModelLoadError propagates.

        `resolve` runs on a miss only, before loading: it turns the stored spec (weights as a
        storage key) into one with a local weights file (workers/objects.py)."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                self.hits += 1
                return model
            # Loading under the lock: jobs run one at a time per device, and two threads
            # asking for the same model should load it once, not twice.
            self.misses += 1
            model = self._load(resolve(spec) if resolve is not None else spec)
            self._models[key] = model
            while len(self._models) > self.max_models:
                evicted, _ = self._models.popitem(last=False)
                log.info("model cache: evicted %s v%s", evicted.model_id, evicted.version)
            log.info("model cache: loaded %s v%s (%s)", key.model_id, key.version, spec.name)
            return model

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def _load(self, spec: ModelSpec) -> nn.Module:
        if self._loader is not None:
            return self._loader(spec)
        # torch import cost only when a model is first needed
        from flipwatch.workers.estimation.loading import load_model, resolve_builders

        return load_model(spec, builders=resolve_builders(self._builder_paths))
