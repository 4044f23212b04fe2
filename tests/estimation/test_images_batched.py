"""Decoding: batched JPEG decoding as tensors agrees with the Pillow path; other formats and
undecodable files go through Pillow, which names every bad file."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flipwatch.workers.estimation.images import (
    ImageError,
    decode_image,
    decode_images,
    load_images,
)
from flipwatch.workers.estimation.spec import ModelSpec

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _spec(**input_spec: object) -> ModelSpec:
    return ModelSpec(
        name="m", format="torchvision", arch="resnet18", num_classes=1000, input=input_spec
    )


EVAL_224 = _spec(size=[224, 224], resize=256, center_crop=True)
GREY_28 = _spec(color="L", size=[28, 28], mean=[0.5], std=[0.5])


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB picture (JPEG-friendly, like a photo rather than noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 6, 8, generator=g)
    up = torch.nn.functional.interpolate(base, size=(height, width), mode="bicubic")
    array = (up[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


class TestDecodeImages:
    @pytest.mark.parametrize("spec", [EVAL_224, GREY_28], ids=["rgb-resize-crop", "grey-stretch"])
    def test_batched_jpegs_match_the_pillow_decoder_within_two_grey_levels(self, spec):
        files = [
            _encode(_photo(w, h, s), "JPEG") for s, (w, h) in enumerate([(500, 375), (320, 480)])
        ]
        batched = decode_images(files, spec)
        pillow = torch.stack([decode_image(f, spec) for f in files])
        assert batched.shape == pillow.shape and batched.dtype == torch.uint8
        difference = (batched.int() - pillow.int()).abs().float()
        assert difference.mean() < 0.5  # measured 0.008 (RGB) and 0.004 (grey)
        assert difference.max() <= 2

    def test_other_formats_go_through_pillow_unchanged_and_keep_their_order(self):
        png = _encode(_photo(300, 300, 3), "PNG")
        jpeg = _encode(_photo(300, 300, 4), "JPEG")
        out = decode_images([png, jpeg, png], EVAL_224)
        assert torch.equal(out[0], decode_image(png, EVAL_224))
        assert torch.equal(out[2], out[0])
        assert not torch.equal(out[1], out[0])

    def test_every_bad_file_is_named_with_its_reason(self):
        good = _encode(_photo(64, 64, 5), "JPEG")
        truncated = good[:40]
        with pytest.raises(ImageError) as info:
            decode_images([good, b"not an image", truncated], EVAL_224, names=["a", "b", "c"])
        assert set(info.value.problems) == {"b", "c"}
        assert info.value.problems["b"] == "not a readable image"

    def test_nothing_to_decode_is_refused(self):
        with pytest.raises(ImageError, match="no images"):
            decode_images([], EVAL_224)

    def test_load_images_reads_and_decodes_a_folder_in_one_batch(self, tmp_path: Path):
        paths = []
        for i in range(3):
            path = tmp_path / f"{i}.jpg"
            path.write_bytes(_encode(_photo(200, 150, i), "JPEG"))
            paths.append(path)
        missing = tmp_path / "gone.jpg"
        assert load_images(paths, GREY_28).shape == (3, 1, 28, 28)
        with pytest.raises(ImageError, match="cannot read"):
            load_images([*paths, missing], GREY_28)

    @needs_cuda
    @pytest.mark.gpu
    def test_jpegs_decode_on_the_gpu_and_stay_there(self):
        files = [_encode(_photo(500, 375, s), "JPEG") for s in range(4)]
        on_gpu = decode_images(files, EVAL_224, device="cuda")
        assert on_gpu.device.type == "cuda"
        cpu = decode_images(files, EVAL_224)
        assert (on_gpu.cpu().int() - cpu.int()).abs().float().mean() < 2.0
