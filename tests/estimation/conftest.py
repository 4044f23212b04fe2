"""Tiny models and inputs for estimator tests (CPU by default, CUDA added when present)."""

import pytest
import torch

from flipwatch.workers.estimation.spec import ModelSpec
from tests.tiny_models import blob_images, confident_tiny

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return ModelSpec(
        name="tiny",
        format="entrypoint",
        entrypoint="tiny",
        num_classes=10,
        input={"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
    )


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    return confident_tiny()


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """300 structured 32×32 images (random blobs), uint8."""
    return blob_images(300)
