"""One way to fetch a row by key or answer 404."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from app.core.errors import NotFoundError
from app.db.tables import Base

Row = TypeVar("Row", bound=Base)


def get_or_404(session: Session, table: type[Row], key: str, kind: str) -> Row:
    row = session.get(table, key)
    if row is None:
        raise NotFoundError(kind, key)
    return row
