"""Names of the calibration suite's corruption families and severities (torch-free).

The API validates requested families against these without importing the estimator; the
functions themselves live in `corruptions.py`, which checks that it implements exactly these.
"""

from __future__ import annotations

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
