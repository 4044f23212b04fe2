"""Alert rules API (create, list, change, delete, refusals) and the alert history API."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flipwatch.service.core.tables import (
    AlertEvent,
    utcnow,
)
from tests.conftest import bearer
from tests.factories import (
    make_alert_rule,
    make_stream,
)
from tests.service.alert.windows import Windows, rule_for

# --- the API ------------------------------------------------------------------------------------


class TestAlertRulesApi:
    def test_admin_creates_and_read_lists(self, client, session, admin_token, read_token):
        stream = make_stream(session)
        body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.8, "windows": 3}
        response = client.post(
            f"/v1/streams/{stream.id}/alert-rules", json=body, headers=bearer(admin_token)
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["Location"] == (
            f"/v1/streams/{stream.id}/alert-rules/{created['id']}"
        )
        assert created | body == created
        assert (created["state"], created["streak"], created["webhook_url"]) == ("ok", 0, None)

        listed = client.get(f"/v1/streams/{stream.id}/alert-rules", headers=bearer(read_token))
        assert [r["id"] for r in listed.json()["items"]] == [created["id"]]
        one = client.get(response.headers["Location"], headers=bearer(read_token))
        assert one.json() == created

    def test_read_and_ingest_keys_may_not_write(self, client, session, read_token, ingest_token):
        stream = make_stream(session)
        body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.8}
        for token in (read_token, ingest_token):
            response = client.post(
                f"/v1/streams/{stream.id}/alert-rules", json=body, headers=bearer(token)
            )
            assert response.status_code == 403
            assert response.json()["code"] == "permission-denied"

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ({"kind": "accuracy_below", "threshold": 80}, "ratio in (0, 1]"),
            ({"kind": "drop_below_reference", "threshold": 0}, "percentage points"),
            ({"kind": "embedding_above", "threshold": 3}, "needs embedding_kind"),
            (
                {"kind": "accuracy_below", "threshold": 0.8, "embedding_kind": "frechet"},
                "embedding_above only",
            ),
        ],
    )
    def test_refuses_meaningless_rules(self, client, session, admin_token, body, reason):
        stream = make_stream(session)
        response = client.post(
            f"/v1/streams/{stream.id}/alert-rules",
            json={"name": "r", **body},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid-alert-rule"
        assert reason in response.json()["detail"]

    def test_duplicate_name_is_409_and_unknown_stream_404(self, client, session, admin_token):
        stream = make_stream(session)
        make_alert_rule(session, stream=stream, name="floor")
        body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.7}
        response = client.post(
            f"/v1/streams/{stream.id}/alert-rules", json=body, headers=bearer(admin_token)
        )
        assert (response.status_code, response.json()["code"]) == (409, "alert-rule-exists")
        missing = client.post(
            "/v1/streams/00000000-0000-0000-0000-000000000001/alert-rules",
            json=body,
            headers=bearer(admin_token),
        )
        assert (missing.status_code, missing.json()["code"]) == (404, "stream-not-found")

    def test_patch_restarts_the_streak_and_clears_the_webhook(self, client, session, admin_token):
        stream = make_stream(session)
        rule = make_alert_rule(session, stream=stream, streak=1, webhook_url="http://hook/x")
        url = f"/v1/streams/{stream.id}/alert-rules/{rule.id}"
        response = client.patch(
            url, json={"threshold": 0.7, "webhook_url": None}, headers=bearer(admin_token)
        )
        assert response.status_code == 200, response.text
        assert (response.json()["threshold"], response.json()["streak"]) == (0.7, 0)
        assert response.json()["webhook_url"] is None
        bad = client.patch(url, json={"threshold": 7}, headers=bearer(admin_token))
        assert bad.status_code == 422

    def test_delete_keeps_the_history(self, client, session, admin_token, read_token):
        stream = make_stream(session)
        rule = rule_for(session, stream, "accuracy_below", 1, name="floor")
        Windows(session, stream, "accuracy_below").send("breach")
        url = f"/v1/streams/{stream.id}/alert-rules/{rule.id}"
        assert client.delete(url, headers=bearer(admin_token)).status_code == 204
        assert client.get(url, headers=bearer(read_token)).status_code == 404

        (event,) = client.get(f"/v1/streams/{stream.id}/alerts", headers=bearer(read_token)).json()[
            "items"
        ]
        assert (event["rule_id"], event["rule_name"], event["state"]) == (None, "floor", "firing")


class TestAlertHistoryApi:
    def test_newest_first_with_keyset_pages(self, client, session, read_token):
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1)
        feed = Windows(session, stream, "accuracy_below")
        base = utcnow()
        for i, which in enumerate(("breach", "clean", "breach", "clean", "breach")):
            (change,) = feed.send(which)
            session.get(AlertEvent, change.event_id).created_at = base + timedelta(seconds=i)
        session.flush()

        seen, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = client.get(
                f"/v1/streams/{stream.id}/alerts", params=params, headers=bearer(read_token)
            ).json()
            seen.extend((e["window_index"], e["state"]) for e in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [
            (4, "firing"),
            (3, "resolved"),
            (2, "firing"),
            (1, "resolved"),
            (0, "firing"),
        ]

    def test_filters_by_rule_and_needs_a_key(self, client, session, read_token):
        stream = make_stream(session)
        floor = rule_for(session, stream, "accuracy_below", 1)
        rule_for(session, stream, "embedding_above", 1)
        Windows(session, stream, "accuracy_below").send(
            "breach", embedding={"frechet": 99.0}
        )  # both rules fire on this window
        url = f"/v1/streams/{stream.id}/alerts"
        assert len(client.get(url, headers=bearer(read_token)).json()["items"]) == 2
        only = client.get(url, params={"rule_id": str(floor.id)}, headers=bearer(read_token))
        assert [e["rule_name"] for e in only.json()["items"]] == [floor.name]
        assert client.get(url).status_code == 401
