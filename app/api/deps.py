"""FastAPI dependencies: settings and a database session per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.db.session import get_sessionmaker
from app.db.tables import ApiKey
from app.services import api_keys


def get_db() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        # After the database went away, closing (its implicit rollback) fails too; the answer (503)
        # has been sent by then, so the dead connection is just dropped from the pool.
        try:
            session.close()
        except SQLAlchemyError:
            session.invalidate()


DbSession = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def require(scope: str):
    """401 without a valid key, 403 when the key's scope is below ``scope``."""

    def check(db: DbSession, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiKey:
        return api_keys.authenticate(db, credentials.credentials if credentials else None, scope)

    return check


bearer = _bearer  # for routes with their own access rule (GET /metrics)

ReadAccess = Depends(require("read"))
WriteAccess = Depends(require("write"))
AdminAccess = Depends(require("admin"))
