"""Model bodies (registration is a multipart form: spec JSON plus the weights file)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: int
    spec: dict[str, Any]
    weights_sha256: str
    created_at: datetime
