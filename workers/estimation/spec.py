"""The model spec: how flipwatch finds, builds and feeds a classifier.

One pydantic schema, shared by the CLI (a JSON file) and the API (the registration body).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
BUILDER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
LEGACY_ZOO_PREFIXES = ("workers.estimation.zoo:", "flipwatch.workers.estimation.zoo:")
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the field and the fix."""


class InputSpec(BaseModel):
    """How raw images become the model's input tensor."""

    model_config = ConfigDict(extra="forbid")

    color: Literal["L", "RGB"] = "RGB"
    size: Annotated[
        list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=2, max_length=2)
    ] = [
        224,
        224,
    ]
    resize: Annotated[int, Field(ge=1, le=8192)] | None = Field(
        default=None,
        description="Resize the short side to this many pixels before center_crop "
        "(torchvision eval style). Without it, images are resized straight to `size`.",
    )
    center_crop: bool = False
    mean: list[float] = list(IMAGENET_MEAN)
    std: list[float] = list(IMAGENET_STD)

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    @model_validator(mode="after")
    def _check_stats(self) -> InputSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"input.{name} has {len(values)} values; color {self.color!r} needs "
                    f"{self.channels} (or 1 for all channels)"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError("input.std values must be positive")
        return self


class ModelSpec(BaseModel):
    """A classifier flipwatch can load: architecture source, weights, classes and preprocessing."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    format: Literal["torchvision", "torchscript", "entrypoint"]
    weights: str | None = Field(
        default=None, description="Path of the weights file (relative paths: to the spec file)."
    )
    arch: str | None = Field(
        default=None, description="torchvision model name (format torchvision)."
    )
    entrypoint: str | None = Field(
        default=None,
        description="Name of a registered builder (format entrypoint): one of the zoo's "
        "(`mnist_cnn`, `tiny`, `efficientnet_lite0`) or one an operator enabled with "
        "FLIPWATCH_MODEL_BUILDERS. Never imported from the request.",
    )
    entrypoint_kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)
    num_classes: Annotated[int, Field(ge=2, le=100_000)]
    input: InputSpec = Field(default_factory=InputSpec)
    imagenet: bool = Field(
        default=False,
        description="An ImageNet-1k classifier: may use the paper's built-in calibration.",
    )

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Specs stored before the registry named zoo builders by import path.
        for prefix in LEGACY_ZOO_PREFIXES:
            if value.startswith(prefix):
                value = value[len(prefix) :]
        if not BUILDER_NAME.fullmatch(value):
            raise ValueError(
                f"entrypoint {value!r} must be a registered builder name (letters, digits, "
                "'_', '-', '.'), e.g. 'mnist_cnn'; operators register more with "
                "FLIPWATCH_MODEL_BUILDERS"
            )
        return value

    @model_validator(mode="after")
    def _format_fields(self) -> ModelSpec:
        if self.format == "torchvision" and not self.arch:
            raise ValueError("format 'torchvision' needs 'arch' (e.g. 'resnet50')")
        if self.format == "entrypoint" and not self.entrypoint:
            raise ValueError("format 'entrypoint' needs 'entrypoint' (a builder name)")
        if self.format == "torchscript" and not self.weights:
            raise ValueError("format 'torchscript' needs 'weights' (the scripted module file)")
        if self.imagenet and self.num_classes != 1000:
            raise ValueError("imagenet: true needs num_classes 1000")
        return self

    def weights_path(self, base: Path | None = None) -> Path | None:
        """The weights file, resolved against `base` (the spec file's folder) when relative."""
        if self.weights is None:
            return None
        path = Path(self.weights).expanduser()
        return path if path.is_absolute() or base is None else base / path


def read_spec(path: str | Path) -> ModelSpec:
    """Parse a spec JSON file; relative weight paths are resolved against its folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"model spec {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise SpecError(f"model spec {path} is not valid JSON: {exc}") from exc
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"model spec {path} is invalid: {_describe(exc)}") from exc
    resolved = spec.weights_path(path.parent)
    return spec if resolved is None else spec.model_copy(update={"weights": str(resolved)})


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in exc.errors()
    )
