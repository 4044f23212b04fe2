"""The offline demo data (MNIST-5k, sklearn digits), its splits, PNG folders, training smoke tests.

The full demo model is never trained here; training runs for a few steps only.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flipwatch.demos import data as demo
from flipwatch.workers.estimation import zoo


def _digests(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.numpy()) for img in images}


@pytest.fixture(scope="module")
def splits() -> demo.DemoSplits:
    return demo.demo_splits(seed=0)


@pytest.fixture(scope="module")
def small(splits: demo.DemoSplits) -> demo.LabeledImages:
    """128 training images: enough for a few optimizer steps."""
    return demo.LabeledImages(splits.train.images[:128], splits.train.labels[:128])


class TestLoadMnist:
    def test_shapes_dtypes_and_ranges(self) -> None:
        images, labels = demo.load_mnist()
        assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (5000,) and labels.dtype == torch.int64
        assert int(images.min()) == 0 and int(images.max()) == 255
        assert labels.bincount().tolist() == [500] * 10

    def test_returns_fresh_tensors(self) -> None:
        images, _ = demo.load_mnist()
        images.zero_()
        assert int(demo.load_mnist()[0].max()) == 255


class TestLoadSklearnDigits:
    def test_shapes_dtypes_and_ranges(self) -> None:
        images, labels = demo.load_sklearn_digits()
        assert images.shape == (1797, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (1797,) and labels.dtype == torch.int64
        assert int(images.min()) == 0 and int(images.max()) == 255
        assert sorted(labels.unique().tolist()) == list(range(10))

    def test_digit_sits_in_a_20_pixel_box_with_a_4_pixel_margin(self) -> None:
        images, _ = demo.load_sklearn_digits()
        assert int(images[..., :4, :].max()) == 0 and int(images[..., -4:, :].max()) == 0
        assert int(images[..., :4].max()) == 0 and int(images[..., -4:].max()) == 0
        assert int(images[..., 4:24, 4:24].amax(dim=(1, 2, 3)).min()) > 0

    def test_other_sizes(self) -> None:
        images, _ = demo.load_sklearn_digits(size=32)
        assert images.shape == (1797, 1, 32, 32)


class TestDemoSplits:
    def test_sizes_and_balanced_classes(self, splits: demo.DemoSplits) -> None:
        for part, per_class in [
            (splits.train, 300),
            (splits.reference, 100),
            (splits.heldout, 100),
        ]:
            assert part.images.shape == (per_class * 10, 1, 28, 28)
            assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64
            assert part.labels.bincount().tolist() == [per_class] * 10
        assert splits.digits.images.shape == (1797, 1, 28, 28)

    def test_splits_are_disjoint_and_cover_mnist(self, splits: demo.DemoSplits) -> None:
        train, reference, heldout = (
            _digests(p.images) for p in (splits.train, splits.reference, splits.heldout)
        )
        assert len(train) == 3000 and len(reference) == 1000 and len(heldout) == 1000
        assert not train & reference and not train & heldout and not reference & heldout
        assert train | reference | heldout == _digests(demo.load_mnist()[0])

    def test_labels_travel_with_their_images(self, splits: demo.DemoSplits) -> None:
        images, labels = demo.load_mnist()
        label_of = {bytes(img.numpy()): int(y) for img, y in zip(images, labels, strict=True)}
        part = splits.reference
        assert [label_of[bytes(img.numpy())] for img in part.images] == part.labels.tolist()

    def test_same_seed_same_splits(self, splits: demo.DemoSplits) -> None:
        again = demo.demo_splits(seed=0)
        for name in ("train", "reference", "heldout", "digits"):
            torch.testing.assert_close(getattr(again, name).images, getattr(splits, name).images)
            torch.testing.assert_close(getattr(again, name).labels, getattr(splits, name).labels)

    def test_other_seed_other_splits(self, splits: demo.DemoSplits) -> None:
        other = demo.demo_splits(seed=1)
        assert _digests(other.heldout.images) != _digests(splits.heldout.images)

    def test_splits_are_shuffled_not_class_blocked(self, splits: demo.DemoSplits) -> None:
        # A class-sorted probe would give single-class BN batches (offline-data.md).
        assert len(splits.reference.labels[:64].unique()) >= 8

    def test_unpacks_as_images_and_labels(self, splits: demo.DemoSplits) -> None:
        images, labels = splits.heldout
        assert images is splits.heldout.images and labels is splits.heldout.labels


class TestWriteImageFolder:
    def test_flat_grayscale_round_trip(self, tmp_path: Path) -> None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (3, 1, 5, 6), generator=g, dtype=torch.uint8)
        paths = demo.write_image_folder(images, tmp_path)
        assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
            "00000.png",
            "00001.png",
            "00002.png",
        ]
        for path, img in zip(paths, images, strict=True):
            with Image.open(path) as pil:
                assert pil.mode == "L"
                np.testing.assert_array_equal(np.asarray(pil), img[0].numpy())

    def test_labeled_rgb_round_trip_in_imagefolder_layout(self, tmp_path: Path) -> None:
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (4, 3, 4, 4), generator=g, dtype=torch.uint8)
        paths = demo.write_image_folder(
            images, tmp_path, labels=[1, 0, 1, 2], classes=["a", "b", "c"]
        )
        assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
            "b/00000.png",
            "a/00001.png",
            "b/00002.png",
            "c/00003.png",
        ]
        for path, img in zip(paths, images, strict=True):
            with Image.open(path) as pil:
                assert pil.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(pil), img.permute(1, 2, 0).numpy())

    def test_label_folders_sort_in_label_order(self, tmp_path: Path) -> None:
        images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
        demo.write_image_folder(images, tmp_path, labels=torch.tensor([2, 10, 9]))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["02", "09", "10"]

    def test_rejects_float_images(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="uint8"):
            demo.write_image_folder(torch.zeros(1, 1, 2, 2), tmp_path)

    def test_rejects_label_count_mismatch(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="2 labels for 1 images"):
            demo.write_image_folder(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), tmp_path, [0, 1])


class TestAugmentBatch:
    def test_keeps_shape_and_range_and_is_seeded(self) -> None:
        x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        a = demo.augment_batch(x, torch.Generator().manual_seed(3))
        b = demo.augment_batch(x, torch.Generator().manual_seed(3))
        assert a.shape == x.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(a, x)

    def test_identity_without_perturbation(self) -> None:
        x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        out = demo.augment_batch(
            x,
            torch.Generator().manual_seed(0),
            degrees=0,
            translate_px=0,
            scale=(1.0, 1.0),
            contrast=(1.0, 1.0),
            noise_std=0,
        )
        torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


class TestTrainDemoModel:
    def test_few_steps_are_deterministic_and_finite(self, small: demo.LabeledImages) -> None:
        kwargs = {"epochs": 1, "seed": 7, "batch_size": 32}
        a = demo.train_demo_model(*small, **kwargs)
        b = demo.train_demo_model(*small, **kwargs)
        assert not a.training
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
        with torch.no_grad():
            assert torch.isfinite(a(demo.normalize(small[0]))).all()

    def test_seed_changes_the_weights(self, small: demo.LabeledImages) -> None:
        a = demo.train_demo_model(*small, epochs=1, seed=0, batch_size=32)
        b = demo.train_demo_model(*small, epochs=1, seed=1, batch_size=32)
        assert not torch.equal(a.fc.weight, b.fc.weight)

    def test_does_not_touch_the_global_rng(self, small: demo.LabeledImages) -> None:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        demo.train_demo_model(*small, epochs=1, seed=0, batch_size=64, augment=False)
        torch.testing.assert_close(torch.rand(3), expected)

    def test_rejects_float_images(self) -> None:
        with pytest.raises(ValueError, match="uint8"):
            demo.train_demo_model(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))


class TestEnsureDemoModel:
    def test_trains_once_caches_and_retrains_on_a_new_recipe(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        splits: demo.DemoSplits,
        small: demo.LabeledImages,
    ) -> None:
        digits = demo.LabeledImages(splits.digits.images[:100], splits.digits.labels[:100])
        few = demo.DemoSplits(small, small, small, digits)
        monkeypatch.setattr(demo, "demo_splits", lambda seed=0: few)
        monkeypatch.setattr(demo, "DEMO_RECIPE", replace(demo.DEMO_RECIPE, epochs=1))
        lines: list[str] = []
        spec, spec_path = demo.ensure_demo_model(tmp_path, log=lines.append)
        assert spec_path == tmp_path / "demo-mnist.json"
        assert (tmp_path / "demo-mnist.pt").is_file() and lines
        assert spec.name == "demo-mnist-cnn" and spec.format == "entrypoint"
        assert spec.entrypoint == "mnist_cnn"
        assert spec.weights == str(tmp_path / "demo-mnist.pt")
        assert spec.num_classes == 10 and not spec.imagenet
        assert spec.input.color == "L" and spec.input.size == [28, 28]
        assert spec.input.mean == [0.1307] and spec.input.std == [0.3081]
        assert '"weights": "demo-mnist.pt"' in spec_path.read_text()  # relative on disk

        state = torch.load(tmp_path / "demo-mnist.pt", weights_only=True)
        model = zoo.mnist_cnn()  # the entrypoint's defaults must fit the recipe
        model.load_state_dict(state, strict=True)

        lines.clear()
        again, _ = demo.ensure_demo_model(tmp_path, log=lines.append)
        assert again == spec and not lines  # cache hit: no training

        monkeypatch.setattr(demo, "DEMO_RECIPE", replace(demo.DEMO_RECIPE, lr=1e-3))
        demo.ensure_demo_model(tmp_path, log=lines.append)
        assert lines  # the recipe changed: retrained
        assert not torch.equal(
            torch.load(tmp_path / "demo-mnist.pt", weights_only=True)["fc.weight"],
            state["fc.weight"],
        )
