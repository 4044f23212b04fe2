"""The corruption suite: exact outputs on a few pixels per family (frozen golden values), and
the properties that matter: shape, dtype and device kept, determinism per seed, severity order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from flipwatch.workers.estimation.corruptions import CORRUPTIONS, corrupt, corruption_suite

SHAPES = [(2, 1, 8, 8), (2, 1, 28, 28), (2, 3, 32, 32)]
SUITE = corruption_suite()


def _images(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """Smooth images in [0.05, 0.95] with some texture, so blurs and warps all change them."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    coarse = torch.rand(n, c, 4, 4, generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    texture = torch.rand(n, c, h, w, generator=g)
    return (0.05 + 0.9 * (0.7 * smooth + 0.3 * texture)).clamp(0, 1)


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Golden outputs at four pixels (n, c, y, x) of `_images((2, 3, 8, 8))`, severities 1 and 5,
# generator seed 1: computed once (CPU, torch 2.14.1) and frozen. Tolerance 2e-6 (float32, values
# rounded to 7 decimals); JPEG gets one 8-bit level, since another libjpeg build may round a DCT
# coefficient the other way.
PIXELS = [(0, 0, 0, 0), (0, 1, 3, 4), (1, 2, 6, 2), (1, 0, 7, 7)]
INPUT_AT_PIXELS = [0.5650492, 0.4699861, 0.5337825, 0.7006469]
GOLDEN: dict[str, dict[int, list[float]]] = {
    "gaussian_noise": {
        1: [0.5040253, 0.4280525, 0.5338218, 0.7231715],
        5: [0.1683942, 0.1974177, 0.5340378, 0.8470566],
    },
    "shot_noise": {1: [0.41, 0.6, 0.67, 0.71], 5: [0.1666667, 0.5, 0.3333333, 0.1666667]},
    "impulse_noise": {
        1: [0.5650492, 0.4699861, 0.5337825, 0.7006469],
        5: [0.5650492, 0.4699861, 1.0, 0.7006469],
    },
    "gaussian_blur": {
        1: [0.5442906, 0.5126505, 0.5210051, 0.6590359],
        5: [0.5006545, 0.5441807, 0.5177263, 0.5290935],
    },
    "defocus_blur": {
        1: [0.5225062, 0.5627806, 0.5074071, 0.6178637],
        5: [0.5084884, 0.5652236, 0.5177802, 0.5247273],
    },
    "motion_blur": {
        1: [0.5736189, 0.544332, 0.525445, 0.6322566],
        5: [0.5348697, 0.5369458, 0.6103601, 0.5275972],
    },
    "contrast": {
        1: [0.556057, 0.4705003, 0.5327959, 0.6829739],
        5: [0.4931121, 0.4740995, 0.5258899, 0.5592628],
    },
    "brightness": {
        1: [0.5850492, 0.4899862, 0.5537825, 0.7206469],
        5: [0.9650491, 0.8699862, 0.9337825, 1.0],
    },
    "fog": {
        1: [0.5724562, 0.4731163, 0.5380843, 0.7111712],
        5: [0.6372676, 0.5005049, 0.5757249, 0.8032584],
    },
    "invert_partial": {
        1: [0.5624472, 0.4711867, 0.5324312, 0.692621],
        5: [0.5234177, 0.489195, 0.5121617, 0.5722329],
    },
    "posterize": {
        1: [0.5647059, 0.4705882, 0.5333334, 0.6901961],
        5: [0.5019608, 0.0, 0.5019608, 0.5019608],
    },
    "pixelate": {
        1: [0.5016055, 0.5085555, 0.5182729, 0.5510733],
        5: [0.5027399, 0.5040309, 0.5411071, 0.4235888],
    },
    "jpeg": {
        1: [0.3960784, 0.6, 0.4745098, 0.4196078],
        5: [0.654902, 0.6196079, 0.454902, 0.2627451],
    },
    "elastic": {
        1: [0.5069603, 0.5072457, 0.5050579, 0.7006469],
        5: [0.5847213, 0.6168646, 0.4044245, 0.7006469],
    },
    "rotate": {
        1: [0.4079387, 0.4810517, 0.5095656, 0.4646011],
        5: [0.0, 0.5295753, 0.3152011, 0.0],
    },
    "translate": {
        1: [0.3847991, 0.4885234, 0.5851224, 0.4692437],
        5: [0.0, 0.5463114, 0.2885655, 0.0],
    },
    "occlusion": {
        1: [0.5650492, 0.4699861, 0.5337825, 0.7006469],
        5: [0.5650492, 0.4030693, 0.7998586, 0.7006469],
    },
}
# Families whose output does not depend on the generator.
DETERMINISTIC = {
    "gaussian_blur",
    "defocus_blur",
    "contrast",
    "brightness",
    "invert_partial",
    "posterize",
    "pixelate",
    "jpeg",
}


def test_golden_table_covers_every_family() -> None:
    assert list(GOLDEN) == list(CORRUPTIONS)


def test_suite_is_every_family_at_every_severity_in_registry_order() -> None:
    assert SUITE == [(f, s) for f in CORRUPTIONS for s in (1, 2, 3, 4, 5)]
    assert corruption_suite(["fog"], (1, 5)) == [("fog", 1), ("fog", 5)]


@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_exact_output_at_golden_pixels(family: str) -> None:
    x = _images((2, 3, 8, 8))
    assert [round(float(x[p]), 7) for p in PIXELS] == INPUT_AT_PIXELS
    atol = 1.01 / 255 if family == "jpeg" else 2e-6
    for severity, expected in GOLDEN[family].items():
        y = corrupt(x, family, severity, generator=_gen(1))
        got = torch.stack([y[p] for p in PIXELS]).double()
        assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=atol)


@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_keeps_shape_dtype_and_device_and_is_deterministic_per_seed(family: str) -> None:
    x = _images((2, 3, 16, 16))
    for images in (x, x.double(), (x * 255).round().to(torch.uint8), x[:, :1]):
        a = corrupt(images, family, 4, generator=_gen(3))
        assert (a.shape, a.dtype, a.device) == (images.shape, images.dtype, images.device)
        assert torch.equal(a, corrupt(images, family, 4, generator=_gen(3)))
    other_seed = corrupt(x, family, 4, generator=_gen(4))
    same_seed = corrupt(x, family, 4, generator=_gen(3))
    assert torch.equal(other_seed, same_seed) == (family in DETERMINISTIC)


@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_change_grows_strictly_with_severity(family: str) -> None:
    for shape in [(4, 1, 28, 28), (4, 3, 32, 32)]:
        x = _images(shape, seed=2)
        change = [
            float((corrupt(x, family, s, generator=_gen(4)) - x).abs().mean()) for s in range(1, 6)
        ]
        assert all(b > a for a, b in zip(change, change[1:], strict=False)), (shape, change)


@pytest.mark.parametrize(("severity", "hits"), [(1, 2), (3, 12), (5, 33)])
def test_impulse_noise_sets_its_share_of_values_to_black_or_white(severity: int, hits: int):
    x = _images((2, 3, 8, 8))  # 192 values per image, none already 0 or 1
    y = corrupt(x, "impulse_noise", severity, generator=_gen(1))
    changed = (y != x).reshape(2, -1)
    assert changed.sum(dim=1).tolist() == [hits, hits]
    assert set(y[y != x].tolist()) <= {0.0, 1.0}


def test_photometric_families_are_exact() -> None:
    x = torch.tensor([[[[0.0, 0.5], [0.25, 1.0]]]])
    assert_close(corrupt(x, "brightness", 1, generator=_gen()), (x + 0.02).clamp(0, 1))
    assert_close(corrupt(x, "invert_partial", 5, generator=_gen()), 0.68 * x + 0.32 * (1 - x))
    mean = x.mean()
    assert_close(corrupt(x, "contrast", 5, generator=_gen()), (x - mean) * 0.2 + mean)
    expected = torch.tensor([[[[0.0, 128.0], [0.0, 128.0]]]]) / 255
    assert_close(corrupt(x, "posterize", 5, generator=_gen()), expected)


class TestValidation:
    def test_rejects_unknown_family(self) -> None:
        with pytest.raises(ValueError, match="unknown corruption 'snow'"):
            corrupt(_images((1, 1, 8, 8)), "snow", 1, generator=_gen())

    @pytest.mark.parametrize("severity", [0, 6, 2.0, True])
    def test_rejects_bad_severity(self, severity: object) -> None:
        with pytest.raises(ValueError, match="severity"):
            corrupt(_images((1, 1, 8, 8)), "fog", severity, generator=_gen())  # type: ignore[arg-type]

    def test_rejects_two_channel_images(self) -> None:
        with pytest.raises(ValueError, match="C = 1 or 3"):
            corrupt(torch.zeros(1, 2, 8, 8), "fog", 1, generator=_gen())

    def test_suite_rejects_unknown_names_and_severities(self) -> None:
        with pytest.raises(ValueError, match="unknown"):
            corruption_suite(["fog", "snow"])
        with pytest.raises(ValueError, match="severities"):
            corruption_suite(severities=(0, 1))


def test_runs_on_device_with_a_cpu_generator(device: torch.device) -> None:
    x = _images((2, 3, 16, 16))
    for family in CORRUPTIONS:
        on_device = corrupt(x.to(device), family, 4, generator=_gen(5))
        assert on_device.device == x.to(device).device
        assert torch.equal(on_device, corrupt(x.to(device), family, 4, generator=_gen(5)))
        # The draws come from the CPU generator, so only kernel rounding differs (a motion-blur
        # tap may round to the next pixel: compare the mean, not every value).
        cpu = corrupt(x, family, 4, generator=_gen(5))
        assert float((on_device.cpu() - cpu).abs().mean()) < 1e-3, family
