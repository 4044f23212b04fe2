"""Keyset pagination, newest first, with opaque cursors, and the `Page[...]` list envelope.

A cursor is the sort key of the last row of a page (base64url JSON), so pages stay stable while
rows are being added, and no query ever uses OFFSET.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from flipwatch.service.core.errors import Invalid

T = TypeVar("T")
ReadT = TypeVar("ReadT", bound=BaseModel)


@dataclass(frozen=True)
class Cursor:
    """The sort key after which the next page starts: (created_at, id) or a window index."""

    values: tuple[Any, ...]

    def encode(self) -> str:
        raw = json.dumps(
            [v.isoformat() if isinstance(v, datetime) else str(v) for v in self.values]
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor `encode` wrote: a JSON list of one or two short strings, nothing else."""
        try:
            padded = text + "=" * (-len(text) % 4)
            values = json.loads(
                base64.urlsafe_b64decode(padded.encode()).decode(), parse_constant=_no_constant
            )
            if not isinstance(values, list) or not 1 <= len(values) <= 2:
                raise ValueError("not a list of one or two values")
            if not all(isinstance(v, str) and len(v) <= 64 for v in values):
                raise ValueError("values are not short strings")
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
            raise Invalid(
                f"cursor {text[:100]!r} is not valid; pass the next_cursor of a page"
            ) from exc
        return cls(tuple(values))

    def window_index(self) -> int:
        """The window-index keyset (estimates), within the database's integer range."""
        value = self.values[0]
        if len(self.values) != 1 or not value.isdigit() or int(value) >= 2**31:
            raise Invalid(_NOT_THIS_LIST)
        return int(value)

    def created_and_id(self) -> tuple[datetime, uuid.UUID]:
        """The (created_at, id) keyset, as an aware UTC time and a UUID."""
        if len(self.values) != 2:
            raise Invalid(_NOT_THIS_LIST)
        try:
            created_at = datetime.fromisoformat(self.values[0])
            if created_at.tzinfo is None:
                created_at = created_at.replace(tzinfo=UTC)
            created_at = created_at.astimezone(UTC)
            return created_at, uuid.UUID(self.values[1])
        except (ValueError, OverflowError) as exc:
            raise Invalid(_NOT_THIS_LIST) from exc


_NOT_THIS_LIST = "cursor does not belong to this list; pass the next_cursor of a page"


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a cursor")


def keyset_page(
    session: Session, stmt: Select[Any], entity: Any, *, limit: int, cursor: Cursor | None
) -> tuple[list[Any], Cursor | None]:
    """One page of `entity` rows ordered by (created_at, id) descending."""
    if cursor is not None:
        created_at, last_id = cursor.created_and_id()
        stmt = stmt.where(
            or_(
                entity.created_at < created_at,
                and_(entity.created_at == created_at, entity.id < last_id),
            )
        )
    rows = list(
        session.scalars(stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1))
    )
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, Cursor((rows[-1].created_at, rows[-1].id))


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[T]
    next_cursor: str | None = None


def page_of(
    read: type[ReadT], rows: Iterable[Any], next_cursor: Cursor | None = None
) -> Page[ReadT]:
    """ORM rows as a Page of `read` models; `next_cursor` is None on the last page."""
    return Page[read](  # type: ignore[valid-type]
        items=[read.model_validate(r) for r in rows],
        next_cursor=next_cursor.encode() if next_cursor else None,
    )
