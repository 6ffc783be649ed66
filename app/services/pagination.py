"""Keyset pagination of list endpoints: ``after`` is the key of the last row a client saw.

Keyset (not offset) so that rows created while a client pages neither shift nor repeat what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.core.errors import NotFoundError

Row = TypeVar("Row")


@dataclass
class Page(Generic[Row]):
    items: list[Row]
    has_more: bool


def keyset_page(
    session: Session,
    stmt: Select[Any],
    table: type[Row],
    order: list[InstrumentedAttribute[Any]],
    after: str | None,
    limit: int,
    newest_first: bool = True,
) -> Page[Row]:
    """Rows of ``stmt`` ordered by ``order`` (its last column unique), strictly past the row ``after``."""
    if after is not None:
        anchor = session.get(table, after)
        if anchor is None:  # 404 like any unknown id: the row a cursor names is gone or never was
            raise NotFoundError("cursor 'after': item", after)
        key = tuple_(*order)
        anchor_key = tuple_(*(getattr(anchor, column.key) for column in order))
        stmt = stmt.where(key < anchor_key if newest_first else key > anchor_key)
    stmt = stmt.order_by(*(column.desc() if newest_first else column.asc() for column in order))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)
