"""The output shapes the list, show and delete commands of every resource share (jobs, datasets, models, ...)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.client.context import get_api
from app.client.output import console, print_json, show


def show_list(
    path: str, as_json: bool, columns: Sequence[str], row: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> None:
    """Every item of a list endpoint: the API's JSON with ``--json``, else a table of ``columns``, each item
    passed through ``row`` first where a column is derived (the JSON stays as the API sent it)."""
    rows = get_api().list_all(path)
    show(rows if as_json or row is None else [row(r) for r in rows], as_json, columns)


def show_item(method: str, path: str, as_json: bool, title: str, **request: Any) -> None:
    """One item the API answers with (GET it, or the answer of a POST/PUT/DELETE) as a record or JSON."""
    show(get_api().json(method, path, **request), as_json, title=title)


def delete_item(path: str, kind: str, item_id: str, as_json: bool) -> None:
    """DELETE an item; the API answers 204 with no body, so say what went: ``{"deleted": id}`` with ``--json``."""
    get_api().json("DELETE", path)
    if as_json:
        print_json({"deleted": item_id})
    else:
        console.print(f"deleted {kind} {item_id}", highlight=False)
