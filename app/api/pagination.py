"""HTTP side of list pagination: ``limit`` / ``after`` query parameters and the GitHub-style headers.

Bodies stay JSON arrays (existing clients read lists); ``X-Has-More`` and an RFC 8288 ``Link: <...>;
rel="next"`` header carry what a wrapper object would.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel

from app.services.pagination import Page

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class PageParams(BaseModel):
    limit: int
    after: str | None


def _page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT,
    after: Annotated[
        str | None, Query(max_length=200, description="Cursor: the id (alias: name) of the last item seen.")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, after=after)


PageQuery = Annotated[PageParams, Depends(_page_params)]


def paginate(request: Request, response: Response, page: Page[Any], key: str = "id") -> list[Any]:
    """Sets ``X-Has-More`` and, when there is more, ``Link`` to the next page; returns the items."""
    response.headers["X-Has-More"] = "true" if page.has_more else "false"
    if page.has_more and page.items:
        limit = request.query_params.get("limit") or str(DEFAULT_LIMIT)
        next_url = request.url.include_query_params(after=str(getattr(page.items[-1], key)), limit=limit)
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return page.items
