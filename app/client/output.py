"""What the commands print: the API's JSON with `--json`, rich tables otherwise; messages and bars on stderr."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
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
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """One row per item; the first column (the id) never wraps, so it can be copied from the terminal."""
    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, no_wrap=i == 0, overflow="fold")
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
