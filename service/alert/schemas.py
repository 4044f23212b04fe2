"""Alert rule and alert event bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyUrl, BaseModel, ConfigDict, Field, UrlConstraints

AlertRuleKind = Literal["accuracy_below", "drop_below_reference", "embedding_above"]
EmbeddingKind = Literal["frechet", "silhouette", "centroid_shift", "class_distance"]
AlertRuleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Unique per stream; the `rule` label of flipwatch_drift_alert.",
        examples=["accuracy-floor"],
    ),
]
THRESHOLD_DESCRIPTION = (
    "accuracy_below: a ratio in (0, 1], fires when estimated accuracy < threshold; "
    "drop_below_reference: percentage points in (0, 100], fires when the estimate is more than "
    "this many points below the model's calibration (reference) accuracy; embedding_above: fires "
    "when result.embedding[embedding_kind] > threshold."
)

# http(s) only, and no longer than the column (2048): longer URLs are a 422, not a database error.
WebhookUrl = Annotated[
    AnyUrl, UrlConstraints(max_length=2048, allowed_schemes=["http", "https"], host_required=True)
]


class AlertRuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: AlertRuleName
    kind: AlertRuleKind
    threshold: float = Field(description=THRESHOLD_DESCRIPTION, examples=[0.8])
    embedding_kind: EmbeddingKind | None = Field(
        default=None, description="Required for (and only for) kind embedding_above."
    )
    windows: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Hysteresis K: fires after K consecutive breaching windows, resolves after K "
        "consecutive clean ones.",
    )
    webhook_url: WebhookUrl | None = Field(
        default=None,
        description="Receives a POST per state change (retried until 2xx). Public addresses "
        "only, unless FLIPWATCH_WEBHOOK_ALLOWED_NETWORKS allows the target's network.",
    )


class AlertRuleUpdate(BaseModel):
    """Fields to change; `kind` is fixed (create another rule instead). Send null to clear
    `webhook_url`. A change to threshold, embedding_kind or windows restarts the streak."""

    model_config = ConfigDict(extra="forbid")

    name: AlertRuleName | None = None
    threshold: float | None = Field(default=None, description=THRESHOLD_DESCRIPTION)
    embedding_kind: EmbeddingKind | None = None
    windows: int | None = Field(default=None, ge=1, le=1000)
    webhook_url: WebhookUrl | None = None


class AlertRuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stream_id: uuid.UUID
    name: str
    kind: AlertRuleKind
    threshold: float
    embedding_kind: EmbeddingKind | None
    windows: int
    webhook_url: str | None
    state: Literal["ok", "firing"]
    streak: int = Field(
        description="Consecutive windows counted toward the next change (breaching while ok, "
        "clean while firing)."
    )
    last_window_index: int | None = Field(description="The last window evaluated.")
    last_value: float | None = Field(description="The value measured on that window.")
    changed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AlertEventRead(BaseModel):
    """One state change; `estimate_id` is the estimate whose window completed the streak."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stream_id: uuid.UUID
    rule_id: uuid.UUID | None = Field(description="null once the rule was deleted.")
    rule_name: str
    kind: AlertRuleKind
    state: Literal["firing", "resolved"]
    estimate_id: uuid.UUID
    window_index: int
    value: float
    threshold: float
    message: str
    created_at: datetime
