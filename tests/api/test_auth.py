"""API keys on the routes: every route but the probes needs one, and roles limit what it may do."""

from __future__ import annotations

import pytest

from tests.conftest import bearer
from tests.factories import make_stream

ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/streams", None),
    ("POST", "/v1/streams", {"name": "x", "model_id": "00000000-0000-0000-0000-000000000001"}),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000001", None),
]


class TestRoutesNeedKeys:
    @pytest.mark.parametrize(("method", "path", "body"), ROUTES)
    def test_every_route_but_health_needs_a_key(self, client, method, path, body):
        response = client.request(method, path, json=body)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"

    @pytest.mark.parametrize("path", ["/healthz", "/readyz"])
    def test_health_needs_no_key(self, client, path):
        assert client.get(path).status_code == 200

    def test_read_key_cannot_create_streams(self, client, session, read_token):
        stream = make_stream(session)
        response = client.post(
            "/v1/streams",
            json={"name": "new", "model_id": str(stream.model_id)},
            headers=bearer(read_token),
        )
        assert response.status_code == 403
        assert response.json()["code"] == "permission-denied"

    def test_ingest_key_cannot_create_streams(self, client, session, ingest_token):
        stream = make_stream(session)
        response = client.post(
            "/v1/streams",
            json={"name": "new", "model_id": str(stream.model_id)},
            headers=bearer(ingest_token),
        )
        assert response.status_code == 403

    def test_ingest_and_read_keys_can_read(self, client, session, ingest_token, read_token):
        stream = make_stream(session)
        for token in (ingest_token, read_token):
            assert client.get(f"/v1/streams/{stream.id}", headers=bearer(token)).status_code == 200

    def test_read_key_cannot_request_estimates(self, client, session, read_token):
        stream = make_stream(session)
        response = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(read_token))
        assert response.status_code == 403
