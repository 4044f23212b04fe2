"""Decoding files into the uint8 tensors the estimator works on, and normalising them."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flipwatch.workers.estimation.images import (
    ImageError,
    decode_image,
    load_image_folder,
    load_images,
    load_labeled_folder,
    normalize,
    to_model_input,
)
from flipwatch.workers.estimation.spec import InputSpec, ModelSpec


def _spec(num_classes: int = 2, **input_fields) -> ModelSpec:
    fields = {"color": "RGB", "size": [8, 8], "mean": [0.5], "std": [0.25]} | input_fields
    return ModelSpec(
        name="m", format="entrypoint", entrypoint="tiny", num_classes=num_classes, input=fields
    )


def _columns(width: int, height: int) -> Image.Image:
    """A gray image whose pixel value is 10 × its column: crops and resizes are visible."""
    row = np.arange(width, dtype=np.uint8) * 10
    return Image.fromarray(np.tile(row, (height, 1)), mode="L")


def _png(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(out, format="PNG")
    return out.getvalue()


class TestToModelInput:
    def test_resize_then_center_crop_keeps_the_middle(self):
        spec = InputSpec(color="L", size=[8, 8], resize=8, center_crop=True, mean=[0.5], std=[1])
        out = to_model_input(_columns(16, 8), spec)  # short side already 8: crop columns 4..11
        assert out.shape == (1, 8, 8) and out.dtype == torch.uint8
        assert out[0, 0].tolist() == [40, 50, 60, 70, 80, 90, 100, 110]

    def test_without_resize_an_image_is_stretched_to_the_size(self):
        spec = InputSpec(color="L", size=[4, 8], mean=[0.5], std=[1])
        out = to_model_input(_columns(16, 8), spec)
        assert out.shape == (1, 4, 8)

    def test_gray_becomes_three_equal_channels_for_an_rgb_model(self):
        out = to_model_input(_columns(8, 8), InputSpec(size=[8, 8]))
        assert out.shape == (3, 8, 8)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


class TestDecode:
    def test_decodes_bytes_at_the_models_size(self):
        out = decode_image(_png(200, size=(16, 16)), _spec())
        assert out.shape == (3, 8, 8) and int(out.min()) == int(out.max()) == 200

    @pytest.mark.parametrize("file_format", ["PNG", "TIFF"])
    @pytest.mark.parametrize("color", ["L", "RGB"])
    def test_sixteen_bit_grayscale_keeps_its_range_instead_of_saturating(self, file_format, color):
        # 16-bit medical and industrial images: Pillow's own conversion clips them to white
        levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
        out = io.BytesIO()
        Image.fromarray(levels * 257).save(out, format=file_format)  # 0, 257, ..., 65535
        decoded = decode_image(out.getvalue(), _spec(color=color, size=[16, 16]))
        expected = torch.from_numpy(levels.astype(np.uint8)).expand(len(color), 16, 16)
        assert torch.equal(decoded, expected)

    def test_float_pixels_are_refused_with_the_reason(self):
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(out, format="TIFF")
        with pytest.raises(ImageError) as caught:
            decode_image(out.getvalue(), _spec(), name="scan.tif")
        assert caught.value.problems == {
            "scan.tif": "32-bit float pixels have no fixed value range; save the image with 8 or "
            "16 bits"
        }

    def test_a_file_that_is_no_image_is_named_with_its_reason(self):
        with pytest.raises(ImageError, match="notes.txt: not a readable image") as caught:
            decode_image(b"hello", _spec(), name="notes.txt")
        assert caught.value.problems == {"notes.txt": "not a readable image"}

    def test_one_bad_file_among_good_ones_fails_the_load_listing_only_it(self, tmp_path: Path):
        good, bad = tmp_path / "a.png", tmp_path / "b.png"
        good.write_bytes(_png(10))
        bad.write_bytes(b"\x89PNG truncated")
        with pytest.raises(ImageError, match="1 file\\(s\\) are not usable images") as caught:
            load_images([good, bad], _spec())
        assert list(caught.value.problems) == [str(bad)]

    def test_nothing_to_load_is_an_error(self):
        with pytest.raises(ImageError, match="no images to load"):
            load_images([], _spec())


class TestFolders:
    def test_loads_in_path_order_skipping_hidden_files(self, tmp_path: Path):
        for name, value in (("b.png", 20), ("a.png", 10), ("sub/c.png", 30)):
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(_png(value))
        (tmp_path / ".DS_Store").write_bytes(b"junk")
        images = load_image_folder(tmp_path, _spec())
        assert images[:, 0, 0, 0].tolist() == [10, 20, 30]

    def test_a_limit_takes_a_seeded_sample_in_path_order(self, tmp_path: Path):
        for i in range(10):
            (tmp_path / f"{i}.png").write_bytes(_png(10 * i))
        first = load_image_folder(tmp_path, _spec(), limit=4, seed=1)
        values = first[:, 0, 0, 0].tolist()
        assert len(values) == 4 and values == sorted(values)
        assert torch.equal(first, load_image_folder(tmp_path, _spec(), limit=4, seed=1))
        assert not torch.equal(first, load_image_folder(tmp_path, _spec(), limit=4, seed=2))

    def test_an_empty_folder_is_named(self, tmp_path: Path):
        with pytest.raises(ImageError, match="holds no images"):
            load_image_folder(tmp_path, _spec())

    def test_labeled_folder_labels_classes_in_sorted_order(self, tmp_path: Path):
        for cls, value in (("dog", 200), ("cat", 100)):
            (tmp_path / cls).mkdir()
            (tmp_path / cls / "1.png").write_bytes(_png(value))
            (tmp_path / cls / "2.png").write_bytes(_png(value + 1))
        images, labels, classes = load_labeled_folder(tmp_path, _spec())
        assert classes == ["cat", "dog"]
        assert labels.tolist() == [0, 0, 1, 1]
        assert images[:, 0, 0, 0].tolist() == [100, 101, 200, 201]

    def test_labeled_folder_must_have_the_models_class_count(self, tmp_path: Path):
        (tmp_path / "cat").mkdir()
        (tmp_path / "cat" / "1.png").write_bytes(_png(1))
        with pytest.raises(ImageError, match="has 1 class folders but model 'm' has 2 classes"):
            load_labeled_folder(tmp_path, _spec())


def test_normalize_scales_to_unit_range_then_applies_mean_and_std():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    spec = InputSpec(mean=[0.5, 0.0, 0.5], std=[0.25, 1.0, 0.5])
    out = normalize(images, spec)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), torch.tensor([-2.0, 0.2, 1.0]), rtol=0, atol=1e-7)
