"""Bodies that belong to HTTP itself, not to a domain: problem details and the probes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:flipwatch:problem:batch-rejected"])
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-item reasons, e.g. {file, index, reason} for a batch."
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    database: str
    broker: str
    storage: str
