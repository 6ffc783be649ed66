"""Errors raised while reading user-supplied datasets.

Every error names the file (as the user knows it), and where possible the 1-based line, the
JSON field / TSV column and the archive member, so that the API can tell the user exactly what
to fix instead of failing later inside training.
"""

from __future__ import annotations

from typing import Any


class DatasetFormatError(ValueError):
    """A dataset file is malformed (mapped to HTTP 422)."""

    def __init__(
        self,
        file: str,
        reason: str,
        line: int | None = None,
        field: str | None = None,
        member: str | None = None,
    ) -> None:
        # args mirror __init__'s parameters so the exception survives pickling (Celery results).
        super().__init__(file, reason, line, field, member)
        self.file = file
        self.reason = reason
        self.line = line
        self.field = field
        self.member = member

    def __str__(self) -> str:
        parts = [self.file]
        if self.member is not None:
            parts.append(f"member '{self.member}'")
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return f"{', '.join(parts)}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        """Structured form for API error bodies."""
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "member": self.member,
            "reason": self.reason,
            "message": str(self),
        }


class DatasetTooLargeError(DatasetFormatError):
    """A dataset exceeds a size, line-count, item-count or text-length limit (mapped to HTTP 413)."""
