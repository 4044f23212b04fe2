"""Drift alert rules of a stream (admin writes, read reads) and the stream's alert history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from flipwatch.service.alert import service as alerts
from flipwatch.service.alert.schemas import (
    AlertEventRead,
    AlertRuleCreate,
    AlertRuleRead,
    AlertRuleUpdate,
)
from flipwatch.service.api.deps import AdminKey, ReadKey, SessionDep, SettingsDep, StreamID
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.core.pagination import Cursor, Page, page_of

router = APIRouter(prefix="/v1/streams/{stream_id}", tags=["alerts"])

AlertRuleID = Annotated[uuid.UUID, Path(description="An alert rule id (GET .../alert-rules).")]


@router.post(
    "/alert-rules",
    status_code=status.HTTP_201_CREATED,
    response_model=AlertRuleRead,
    responses=problem_responses(401, 403, 404, 409, 422),
)
def create_alert_rule(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    _key: AdminKey,
    stream_id: StreamID,
    body: AlertRuleCreate,
) -> AlertRuleRead:
    """Add a rule; it starts `ok` and counts from the next estimate on."""
    rule = alerts.create_alert_rule(
        session,
        stream_id=stream_id,
        name=body.name,
        kind=body.kind,
        threshold=body.threshold,
        embedding_kind=body.embedding_kind,
        windows=body.windows,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        settings=settings,
    )
    response.headers["Location"] = f"/v1/streams/{stream_id}/alert-rules/{rule.id}"
    return AlertRuleRead.model_validate(rule)


@router.get(
    "/alert-rules",
    response_model=Page[AlertRuleRead],
    responses=problem_responses(401, 403, 404),
)
def list_alert_rules(
    session: SessionDep, _key: ReadKey, stream_id: StreamID
) -> Page[AlertRuleRead]:
    """Every rule of the stream, oldest first, with its current state (one page)."""
    rules = alerts.list_alert_rules(session, stream_id=stream_id)
    return page_of(AlertRuleRead, rules)


@router.get(
    "/alert-rules/{rule_id}",
    response_model=AlertRuleRead,
    responses=problem_responses(401, 403, 404),
)
def read_alert_rule(
    session: SessionDep, _key: ReadKey, stream_id: StreamID, rule_id: AlertRuleID
) -> AlertRuleRead:
    rule = alerts.get_alert_rule(session, stream_id=stream_id, rule_id=rule_id)
    return AlertRuleRead.model_validate(rule)


@router.patch(
    "/alert-rules/{rule_id}",
    response_model=AlertRuleRead,
    responses=problem_responses(401, 403, 404, 409, 422),
)
def update_alert_rule(
    session: SessionDep,
    settings: SettingsDep,
    _key: AdminKey,
    stream_id: StreamID,
    rule_id: AlertRuleID,
    body: AlertRuleUpdate,
) -> AlertRuleRead:
    """Change name, threshold, embedding_kind, windows or webhook_url (null clears it)."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("webhook_url") is not None:
        changes["webhook_url"] = str(changes["webhook_url"])
    rule = alerts.update_alert_rule(
        session, stream_id=stream_id, rule_id=rule_id, changes=changes, settings=settings
    )
    return AlertRuleRead.model_validate(rule)


@router.delete(
    "/alert-rules/{rule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404),
)
def delete_alert_rule(
    session: SessionDep, _key: AdminKey, stream_id: StreamID, rule_id: AlertRuleID
) -> Response:
    """Delete the rule; its history stays listed under /alerts (with rule_id null)."""
    alerts.delete_alert_rule(session, stream_id=stream_id, rule_id=rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/alerts",
    response_model=Page[AlertEventRead],
    responses=problem_responses(401, 403, 404, 422),
)
def list_alerts(
    session: SessionDep,
    _key: ReadKey,
    stream_id: StreamID,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    rule_id: Annotated[uuid.UUID | None, Query(description="Only this rule's changes.")] = None,
) -> Page[AlertEventRead]:
    """The stream's alert state changes, newest first (keyset pagination)."""
    rows, next_cursor = alerts.list_alert_events(
        session,
        stream_id=stream_id,
        limit=limit,
        cursor=Cursor.decode(cursor) if cursor else None,
        rule_id=rule_id,
    )
    return page_of(AlertEventRead, rows, next_cursor)
