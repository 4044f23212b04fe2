"""API keys: only a hash and a prefix stored, bearer parsing, revocation."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from flipwatch.service.core.auth import authenticate, create_api_key
from flipwatch.service.core.errors import Invalid, NotAuthenticated
from flipwatch.service.core.tables import ApiKey, utcnow


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
