"""Storage settings: the backend needs what it needs, and says which variable is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings


def test_s3_without_a_bucket_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="FLIPWATCH_STORAGE_BUCKET"):
        Settings(storage_backend="s3")


@pytest.mark.parametrize("prefix", ["no-slash", "/abs/", "a/../b/"])
def test_a_prefix_must_be_relative_and_end_in_a_slash(prefix: str) -> None:
    with pytest.raises(ValidationError, match="FLIPWATCH_STORAGE_PREFIX"):
        Settings(storage_backend="s3", storage_bucket="b", storage_prefix=prefix)


def test_the_default_is_the_local_store_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = storage.open_store(settings)
    assert isinstance(store, storage.LocalStore)
    assert store.root == tmp_path.resolve()
    assert storage.open_store(settings) is store  # one per configuration per process
    assert settings.effective_cache_dir == tmp_path / "cache"
