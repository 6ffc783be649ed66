"""API keys: random 256-bit tokens, stored as SHA-256 hashes, each with a scope.

A fast hash is the right tool here (as for GitHub tokens): keys are high-entropy random strings,
so there is nothing to brute-force, and every request must verify one quickly.
Scopes nest: admin > write > read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequestError, RetuneError
from app.db.tables import ApiKey, utcnow
from app.services.lookup import get_or_404

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "rt_"


class MissingKeyError(RetuneError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012 - a constant


class ForbiddenError(RetuneError):
    status_code = 403


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, scope: str, key: str | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the key; the key is shown this once and never stored."""
    if scope not in SCOPES:
        raise InvalidRequestError(f"scope must be one of {', '.join(SCOPES)}")
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name[:200], prefix=key[:10], key_hash=hash_key(key), scope=scope)
    session.add(row)
    session.commit()
    return row, key


def ensure_bootstrap_key(session: Session, key: str) -> None:
    """Accept the deployment's configured admin key (idempotent; re-enables nothing that was revoked)."""
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))) is None:
        create_key(session, "bootstrap", "admin", key)


def has_active_admin(session: Session) -> bool:
    query = select(ApiKey.id).where(ApiKey.scope == "admin", ApiKey.revoked_at.is_(None)).limit(1)
    return session.scalar(query) is not None


def authenticate(session: Session, key: str | None, needed: str) -> ApiKey:
    if not key:
        raise MissingKeyError("missing API key: send 'Authorization: Bearer <key>'")
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, hash_key(key)):
        raise MissingKeyError("invalid or revoked API key")
    if SCOPES.index(row.scope) < SCOPES.index(needed):
        raise ForbiddenError(f"this key has scope '{row.scope}'; this operation needs '{needed}'")
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    row = get_or_404(session, ApiKey, key_id, "api key")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row
