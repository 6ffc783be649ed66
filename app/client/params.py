"""`--param k=v` parsing: a value is JSON when it parses as JSON (numbers, booleans, lists, null), else a string."""

from __future__ import annotations

import json
from typing import Any


class ParamError(ValueError):
    """A `k=v` argument without `=` or with an empty key: a usage error caught before any request."""


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["epochs=1", "lr=2e-5", "name=abc"]`` into ``{"epochs": 1, "lr": 2e-05, "name": "abc"}``."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamError(f"expected KEY=VALUE, got {item!r}")
        params[key] = parse_value(value)
    return params
