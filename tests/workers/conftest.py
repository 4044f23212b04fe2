"""Worker-side fixtures: a committing session factory (jobs commit in their own transactions, so
the rolled-back `session` fixture cannot hold them), truncated after each test, and a tiny model
saved to disk so the worker can load it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from tests.conftest import truncate_all
from tests.factories import TINY_SPEC
from tests.tiny_models import blob_images as window_images
from tests.tiny_models import confident_tiny


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions that really commit, as the worker's do; every table is emptied afterwards."""
    yield make_sessionmaker(engine)
    truncate_all(engine)


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    """The shared test settings with a short calibration trajectory."""
    return settings.model_copy(update={"default_steps": 10})


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The confident tiny CNN's weights on disk."""
    path = tmp_path_factory.mktemp("tiny-model") / "tiny.pt"
    torch.save(confident_tiny().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_calibration(tiny_weights: Path) -> dict[str, Any]:
    """A real (small) calibration of the tiny model, as `Calibration.to_dict()`: four noise
    shifts, 10-step trajectories, so estimate jobs have a fitted map to use."""
    from flipwatch.workers.estimation import EstimateConfig, calibrate, load_model
    from flipwatch.workers.estimation.spec import ModelSpec

    spec = ModelSpec.model_validate({**TINY_SPEC, "weights": str(tiny_weights)})
    labels = torch.arange(100) % 10
    fitted = calibrate(
        load_model(spec),
        window_images(100, seed=1),
        labels,
        spec=spec,
        config=EstimateConfig(steps=10),
        families=["gaussian_noise"],
        severities=(2, 4),
    )
    return fitted.to_dict()
