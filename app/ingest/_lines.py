"""Shared line reader: size/line limits, UTF-8 (with optional BOM), CRLF, blank lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.ingest.errors import DatasetFormatError, DatasetTooLargeError
from app.ingest.types import ParseLimits

_BOM = b"\xef\xbb\xbf"


def check_file(path: Path, file_label: str, limits: ParseLimits) -> int:
    """Fail early on a missing or oversized file; returns its size in bytes."""
    if not path.is_file():
        reason = "expected a file, found a folder" if path.is_dir() else "file is missing"
        raise DatasetFormatError(file_label, reason)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise DatasetTooLargeError(file_label, f"file is {size} bytes, the limit is {limits.max_bytes}")
    return size


def iter_lines(path: Path, file_label: str, limits: ParseLimits) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for each non-blank line, without line ends."""
    check_file(path, file_label, limits)
    with path.open("rb") as handle:
        # Binary split on b"\n" only: str.splitlines() would also split on U+2028 etc. inside JSON.
        for lineno, raw in enumerate(handle, start=1):
            if lineno > limits.max_lines:
                raise DatasetTooLargeError(file_label, f"more than {limits.max_lines} lines", line=lineno)
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetFormatError(
                    file_label, f"not valid UTF-8 (byte offset {exc.start} in the line)", line=lineno
                ) from None
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            yield lineno, text


def parse_json_object(text: str, file_label: str, lineno: int) -> dict[str, Any]:
    """Decode one JSONL line that must hold a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(file_label, f"not valid JSON ({exc.msg} at column {exc.colno})", line=lineno) from None
    except RecursionError:
        raise DatasetFormatError(file_label, "JSON nested too deeply", line=lineno) from None
    if not isinstance(value, dict):
        raise DatasetFormatError(file_label, f"expected a JSON object, got {json_type(value)}", line=lineno)
    return value


def json_type(value: object) -> str:
    """Name a JSON value's type the way a user would, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
