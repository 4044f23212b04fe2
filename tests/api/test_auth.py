"""API keys: hashed storage, bearer parsing, revocation, and role checks across resources."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from flipwatch.service.auth import authenticate, create_api_key
from flipwatch.service.errors import Invalid, NotAuthenticated
from flipwatch.service.models import ApiKey, utcnow
from tests.conftest import bearer
from tests.factories import make_stream


class TestCreateApiKey:
    def test_stores_only_the_sha256_and_a_prefix(self, session):
        key, token = create_api_key(session, role="read", name="dash")
        row = session.scalar(select(ApiKey).where(ApiKey.id == key.id))
        assert token.startswith(f"fw_{row.prefix}_")
        assert row.key_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in (row.key_hash, row.prefix)
        assert len(token) > 40

    def test_rejects_unknown_role(self, session):
        with pytest.raises(Invalid):
            create_api_key(session, role="root")


class TestAuthenticate:
    def test_accepts_a_valid_token(self, session):
        key, token = create_api_key(session, role="ingest")
        assert authenticate(session, f"Bearer {token}").id == key.id

    @pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer fw_x_y"])
    def test_rejects_missing_or_malformed(self, session, header):
        with pytest.raises(NotAuthenticated):
            authenticate(session, header)

    def test_rejects_right_prefix_wrong_secret(self, session):
        _, token = create_api_key(session, role="ingest")
        with pytest.raises(NotAuthenticated):
            authenticate(session, f"Bearer {token[:-1]}x")

    def test_rejects_revoked_key(self, session):
        key, token = create_api_key(session, role="admin")
        key.revoked_at = utcnow()
        with pytest.raises(NotAuthenticated, match="revoked"):
            authenticate(session, f"Bearer {token}")


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
