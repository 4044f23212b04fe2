"""The calibration suite's vocabulary: corruption families, severities, class mixes (torch-free).

The API validates requested families against these without importing the estimator; the
functions themselves live in `corruptions.py`, which checks that it implements exactly these.
"""

from __future__ import annotations

from typing import Literal

FAMILIES: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "defocus_blur",
    "motion_blur",
    "contrast",
    "brightness",
    "fog",
    "invert_partial",
    "posterize",
    "pixelate",
    "jpeg",
    "elastic",
    "rotate",
    "translate",
    "occlusion",
)

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# The default suite: every family at severities 2, 3 and 4, no half mixes, plus clean (52
# variants for the 17 families); calibration adds every skewed class-mix variant (20) and the 4
# spread subsets: 76 trajectories, under the default trajectory setting only.
# `benchmarks/calibration_suite.py` scores 60 subsets of a measured superset (severities 2-4, class
# mixes, the learning-rate grid) on the held-out sets and skewed class-mix windows of two
# architectures. Re-run with the guarded class-mix correction (2026-12-01), cheaper suites passed
# its 0.3-point rule too; this one is kept as the lowest ResNet held-out error among the suites
# without the grid that still calibrate on shifted windows with skewed mixes (README, Performance).
DEFAULT_SEVERITIES: tuple[int, ...] = (2, 3, 4)

# Which skewed class-mix variants a suite measures: "all" (the clean set in each skewed kind and
# each family at its middle severity in a kind by turn, the default), "clean" (the clean set
# only) or "none".
ClassMixes = Literal["all", "clean", "none"]
CLASS_MIX_CHOICES: tuple[ClassMixes, ...] = ("all", "clean", "none")
DEFAULT_CLASS_MIXES: ClassMixes = "all"
