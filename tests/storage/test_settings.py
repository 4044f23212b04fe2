"""Storage settings: the backend needs what it needs, and says which variable is missing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flipwatch.service.core import storage
from flipwatch.service.core.errors import StorageUnavailable
from flipwatch.service.core.settings import Settings
from tests.s3server import silent_endpoint


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


@pytest.mark.parametrize(
    "field",
    ["storage_max_attempts", "storage_connect_timeout_seconds", "storage_read_timeout_seconds"],
)
def test_attempts_and_timeouts_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 0})


@pytest.mark.timeout(30)  # the old hard-coded client waited 5 attempts x 60 s here
def test_s3_attempts_and_timeouts_come_from_the_settings() -> None:
    """A server that accepts and never answers costs max_attempts reads of read_timeout each
    (plus boto3's backoff, under a second between two attempts), then StorageUnavailable."""
    with silent_endpoint() as endpoint:
        settings = Settings(
            storage_backend="s3",
            storage_bucket="flipwatch",
            storage_endpoint_url=endpoint.url,
            storage_access_key_id="FWSILENT",
            storage_secret_access_key="x" * 40,
            storage_max_attempts=2,
            storage_connect_timeout_seconds=1.5,
            storage_read_timeout_seconds=0.5,
        )
        store = storage.open_store(settings)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="cannot be reached"):
            store.get("images/ab/cd/x.png")
        elapsed = time.monotonic() - started
        connections = endpoint.connections

    assert connections == 2
    assert 1.0 <= elapsed < 5.0
    assert isinstance(store, storage.S3Store)
    assert (store.config.max_attempts, store.config.connect_timeout) == (2, 1.5)
