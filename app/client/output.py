"""What the commands print: the API's JSON with `--json`, rich tables otherwise; messages and bars on stderr."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

TEXT_CHARS = 160  # a search hit's text is cut to this in tables (the whole text is in --json)
ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)")


def _stdout_width() -> int | None:
    """Piped output gets 200 columns (rich's default there is 80, which folds every id); a terminal its own width."""
    return None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200


console = Console(width=_stdout_width())
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping), so `retune ... --json | jq` always parses."""
    print(json.dumps(data, indent=2, default=str))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    text = str(value)
    if match := ISO_TIME.match(text):  # 2026-12-01T09:44:38.177283Z -> 2026-12-01 09:44:38 (UTC)
        return f"{match[1]} {match[2]}"
    return text


def clip(text: str | None, limit: int = TEXT_CHARS) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """One row per item; ids never wrap, so they can be copied from the terminal."""
    table = Table(title=title)
    for name in columns:
        table.add_column(name, no_wrap=name == "id" or name.endswith("_id"), overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in columns))
    console.print(table)


def print_record(record: dict[str, Any], title: str | None = None) -> None:
    """One item as a two-column table of its fields."""
    table = Table(title=title, show_header=False)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        table.add_row(key, cell(value))
    console.print(table)


def show(data: Any, as_json: bool, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """A list as a table of ``columns``, one item as a record, or the API's JSON with ``--json``."""
    if as_json:
        print_json(data)
    elif isinstance(data, list):
        print_table(data, columns or (list(data[0]) if data else ["id"]), title)
    elif isinstance(data, dict):
        print_record(data, title)
    elif data is not None:
        console.print(data)
