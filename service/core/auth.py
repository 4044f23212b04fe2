"""API keys: high-entropy bearer tokens stored as sha256, looked up by a short prefix.

Token shape: `fw_<prefix>_<secret>`; the prefix (12 hex chars) is public, the secret never stored.
The CLI (`flipwatch api-key create`), the bootstrap key and the tests all use `create_api_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.core.errors import Invalid, NotAuthenticated, PermissionDenied
from flipwatch.service.core.tables import ROLES, ApiKey

TOKEN_PREFIX = "fw_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    """The lookup id: the middle part of `fw_<prefix>_<secret>`, else derived from the hash.

    The derived form lets a free-form bootstrap key be looked up the same way.
    """
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] + "_" == TOKEN_PREFIX and len(parts[1]) == 12:
        return parts[1]
    return "h" + hash_token(token)[:23]


def create_api_key(
    session: Session, *, role: str, name: str | None = None, token: str | None = None
) -> tuple[ApiKey, str]:
    """Add a key with `role`; returns the row and the token (shown once, never stored)."""
    if role not in ROLES:
        raise Invalid(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = token or f"{TOKEN_PREFIX}{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    key = ApiKey(prefix=token_prefix(token), key_hash=hash_token(token), role=role, name=name)
    session.add(key)
    session.flush()
    return key, token


def ensure_api_key(session: Session, *, token: str, role: str, name: str) -> ApiKey:
    """Create the key for `token` unless present (the bootstrap admin key at start-up)."""
    existing = session.scalar(select(ApiKey).where(ApiKey.prefix == token_prefix(token)))
    if existing is not None:
        return existing
    key, _ = create_api_key(session, role=role, name=name, token=token)
    return key


def authenticate(session: Session, authorization: str | None) -> ApiKey:
    """The active key named by an `Authorization: Bearer <token>` header, or NotAuthenticated."""
    if not authorization:
        raise NotAuthenticated("send an API key as 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("the Authorization header must be 'Bearer <token>'")
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == token_prefix(token)))
    if key is None or not hmac.compare_digest(key.key_hash, hash_token(token)):
        raise NotAuthenticated("unknown API key; create one with `flipwatch api-key create`")
    if key.revoked_at is not None:
        raise NotAuthenticated(f"API key {key.prefix} was revoked")
    return key


# Which roles may do what: admin everything; ingest posts batches and asks for estimates, and reads
# back what it sent; read only reads.
READ_ROLES = frozenset({"admin", "ingest", "read"})
INGEST_ROLES = frozenset({"admin", "ingest"})
ADMIN_ROLES = frozenset({"admin"})


def check_role(key: ApiKey, allowed: frozenset[str], action: str) -> None:
    if key.role not in allowed:
        raise PermissionDenied(
            f"API key {key.prefix} has role {key.role!r}; {action} needs one of "
            f"{', '.join(sorted(allowed))}"
        )
