"""Bodies of POST /v1/streams/{stream_id}/labels."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LabelItem(BaseModel):
    """The true class of one ingested image, named by its id or by its content hash."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image_id": None, "sha256": "ab" * 32, "label": 7}]},
    )

    image_id: uuid.UUID | None = Field(
        default=None, description="An image id of this stream (from the batch response)."
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Hex SHA-256 of the image file; labels every image of the stream with it.",
    )
    label: int = Field(ge=0, description="The true class index (0 .. num_classes - 1).")

    @model_validator(mode="after")
    def _one_reference(self) -> LabelItem:
        if (self.image_id is None) == (self.sha256 is None):
            raise ValueError("give exactly one of image_id and sha256")
        return self


class LabelsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[LabelItem] = Field(
        min_length=1, max_length=10_000, description="Up to 10,000 labels per request."
    )


class WindowRealized(BaseModel):
    """One window touched by the labels: how many of its images are labeled and, once enough
    are, the realized accuracy beside the label-free estimate."""

    window_index: int
    estimate_id: uuid.UUID | None = Field(description="None while the window has no estimate.")
    labeled_count: int = Field(description="Labeled images of the window with a prediction.")
    estimated_accuracy: float | None
    realized_accuracy: float | None = Field(
        description="Share of labeled images the model classified right; None below "
        "FLIPWATCH_REALIZED_MIN_LABELS labels."
    )
    estimator_error: float | None = Field(
        description="estimated_accuracy - realized_accuracy (positive: the estimate was high)."
    )


class LabelsRead(BaseModel):
    images_labeled: int = Field(description="Image rows whose label was set by this request.")
    windows: list[WindowRealized]
