"""Streams: create (admin), defaults from settings, unknown model, duplicate names, list, get."""

from __future__ import annotations

import uuid

from tests.conftest import bearer
from tests.factories import make_model, make_stream


class TestCreateStream:
    def test_creates_with_default_window_policy(self, client, session, admin_token):
        model = make_model(session)
        response = client.post(
            "/v1/streams",
            json={"name": "checkout-camera-3", "model_id": str(model.id)},
            headers=bearer(admin_token),
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == f"/v1/streams/{body['id']}"
        assert body | {"id": None, "created_at": None} == {
            "id": None,
            "name": "checkout-camera-3",
            "model_id": str(model.id),
            "window_size": 1000,
            "steps": 250,
            "auto_estimate": True,
            "images_total": 0,
            "current_window_index": 0,
            "window_fill": 0,
            "retain_images": None,
            "retain_days": None,
            "created_at": None,
        }

    def test_stores_a_retention_policy(self, client, session, admin_token):
        model = make_model(session)
        response = client.post(
            "/v1/streams",
            json={
                "name": "kept-short",
                "model_id": str(model.id),
                "retain_images": 5000,
                "retain_days": 7,
            },
            headers=bearer(admin_token),
        )
        assert response.status_code == 201, response.text
        assert (response.json()["retain_images"], response.json()["retain_days"]) == (5000, 7.0)

    def test_rejects_unknown_model(self, client, admin_token):
        missing = uuid.uuid4()
        response = client.post(
            "/v1/streams",
            json={"name": "cam", "model_id": str(missing)},
            headers=bearer(admin_token),
        )
        assert response.status_code == 404
        assert response.json()["code"] == "model-not-found"
        assert str(missing) in response.json()["detail"]

    def test_rejects_duplicate_name(self, client, session, admin_token):
        stream = make_stream(session)
        response = client.post(
            "/v1/streams",
            json={"name": stream.name, "model_id": str(stream.model_id)},
            headers=bearer(admin_token),
        )
        assert response.status_code == 409
        assert response.json()["code"] == "stream-exists"

    def test_rejects_window_below_estimator_minimum(self, client, session, admin_token):
        model = make_model(session)
        response = client.post(
            "/v1/streams",
            json={"name": "cam", "model_id": str(model.id), "window_size": 10},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == "window_size"


class TestReadStreams:
    def test_lists_newest_first_with_keyset_pages(self, client, session, read_token):
        streams = [make_stream(session) for _ in range(3)]
        headers = bearer(read_token)
        first = client.get("/v1/streams?limit=2", headers=headers).json()
        second = client.get(
            f"/v1/streams?limit=2&cursor={first['next_cursor']}", headers=headers
        ).json()
        names = [s["name"] for s in first["items"] + second["items"]]
        assert names == [s.name for s in reversed(streams)]
        assert second["next_cursor"] is None

    def test_rejects_garbage_cursor(self, client, read_token):
        response = client.get("/v1/streams?cursor=%%%", headers=bearer(read_token))
        assert response.status_code == 422
        assert response.json()["code"] == "invalid"

    def test_unknown_stream_is_404(self, client, read_token):
        response = client.get(f"/v1/streams/{uuid.uuid4()}", headers=bearer(read_token))
        assert response.status_code == 404
        assert response.json()["code"] == "stream-not-found"
