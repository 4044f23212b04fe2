"""The corruption suite: every family × severity on tiny images."""

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


def test_suite_has_at_least_twelve_families_with_five_severities() -> None:
    assert len(CORRUPTIONS) >= 12
    assert len(SUITE) == 5 * len(CORRUPTIONS)
    assert corruption_suite(["fog"], (1, 5)) == [("fog", 1), ("fog", 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("family", "severity"), SUITE, ids=[f"{f}-{s}" for f, s in SUITE])
def test_keeps_shape_dtype_range_and_changes_image(
    family: str, severity: int, shape: tuple[int, int, int, int]
) -> None:
    x = _images(shape)
    y = corrupt(x, family, severity, generator=_gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert float((y - x).abs().mean()) > 0.0


@pytest.mark.parametrize(("family", "severity"), SUITE, ids=[f"{f}-{s}" for f, s in SUITE])
def test_same_seed_gives_bit_identical_output(family: str, severity: int) -> None:
    x = _images((2, 3, 16, 16))
    a = corrupt(x, family, severity, generator=_gen(3))
    b = corrupt(x, family, severity, generator=_gen(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_uint8_in_uint8_out(family: str) -> None:
    x = (_images((2, 1, 28, 28)) * 255).round().to(torch.uint8)
    y = corrupt(x, family, 3, generator=_gen())
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert torch.equal(y, corrupt(x, family, 3, generator=_gen()))


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (4, 3, 32, 32)], ids=["28", "32"])
@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_change_grows_with_severity(family: str, shape: tuple[int, int, int, int]) -> None:
    x = _images(shape, seed=2)
    change = [
        float((corrupt(x, family, s, generator=_gen(4)) - x).abs().mean()) for s in range(1, 6)
    ]
    assert change[4] > change[0]
    # non-strict; resampling on a coarse grid may wobble by a hair, so allow 2 % of the range
    tolerance = 0.02 * change[4]
    assert all(b >= a - tolerance for a, b in zip(change, change[1:], strict=False)), change


def test_float64_input_stays_float64() -> None:
    x = _images((1, 3, 8, 8)).double()
    assert corrupt(x, "rotate", 2, generator=_gen()).dtype == torch.float64


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


@pytest.mark.parametrize("family", list(CORRUPTIONS))
def test_runs_on_device_with_a_cpu_generator(family: str, device: torch.device) -> None:
    x = _images((2, 3, 16, 16)).to(device)
    a = corrupt(x, family, 4, generator=_gen(5))
    b = corrupt(x, family, 4, generator=_gen(5))
    assert a.device == x.device and a.shape == x.shape and torch.equal(a, b)
    assert torch.isfinite(a).all() and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
