"""workers/model_cache.py: LRU by (model id, version, weights sha256), one load per key."""

from __future__ import annotations

import threading
import uuid

import pytest
from torch import nn

from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.model_cache import ModelCache, ModelKey

SPEC = ModelSpec(name="m", format="entrypoint", entrypoint="tiny", num_classes=2)


def counting_loader() -> tuple[list[ModelSpec], object]:
    calls: list[ModelSpec] = []

    def load(spec: ModelSpec) -> nn.Module:
        calls.append(spec)
        return nn.Identity()

    return calls, load


def key(version: int = 1, sha: str = "a", model_id: uuid.UUID | None = None) -> ModelKey:
    return ModelKey(model_id or uuid.UUID(int=1), version, sha * 64)


def test_loads_once_per_key_and_again_for_a_new_version_or_weights() -> None:
    calls, load = counting_loader()
    cache = ModelCache(loader=load)  # type: ignore[arg-type]

    first = cache.get(key(), SPEC)
    assert cache.get(key(), SPEC) is first
    cache.get(key(version=2), SPEC)
    cache.get(key(sha="b"), SPEC)

    assert len(calls) == 3
    assert (cache.hits, cache.misses) == (1, 3)


def test_evicts_the_least_recently_used() -> None:
    _, load = counting_loader()
    cache = ModelCache(max_models=2, loader=load)  # type: ignore[arg-type]
    a, b, c = key(1), key(2), key(3)
    cache.get(a, SPEC)
    cache.get(b, SPEC)
    cache.get(a, SPEC)  # a is now the most recent
    cache.get(c, SPEC)

    assert a in cache and c in cache and b not in cache


def test_racing_threads_load_a_model_once() -> None:
    calls, load = counting_loader()
    cache = ModelCache(loader=load)  # type: ignore[arg-type]
    threads = [threading.Thread(target=cache.get, args=(key(), SPEC)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1


def test_refuses_an_empty_cache() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ModelCache(max_models=0)
