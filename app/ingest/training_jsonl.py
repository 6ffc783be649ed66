"""Parser for FlagEmbedding-style training JSONL (query / pos / neg [/ pos_scores / neg_scores / prompt]).

Validation is strict and line-precise because a bad line found here costs the user seconds, while the
same line found by the trainer costs a failed GPU job.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from app.ingest._lines import iter_lines, json_type, parse_json_object
from app.ingest.errors import DatasetFormatError, DatasetTooLargeError
from app.ingest.types import ParseLimits, TrainingExample


class _Line:
    """Validation helpers bound to one line, so every error carries file, line and field."""

    def __init__(self, obj: dict[str, Any], file_label: str, lineno: int, limits: ParseLimits) -> None:
        self.obj = obj
        self.file = file_label
        self.line = lineno
        self.limits = limits

    def error(self, field: str, reason: str) -> DatasetFormatError:
        return DatasetFormatError(self.file, reason, line=self.line, field=field)

    def text(self, value: object, field: str, what: str = "a string") -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected {what}, got {json_type(value)}")
        if not value.strip():
            raise self.error(field, "must not be empty")
        if len(value) > self.limits.max_text_chars:
            raise DatasetTooLargeError(
                self.file,
                f"text has {len(value)} characters, the limit is {self.limits.max_text_chars}",
                line=self.line,
                field=field,
            )
        return value

    def text_list(self, field: str, *, required: bool) -> list[str]:
        value = self.obj.get(field)
        if value is None:
            if required:
                raise self.error(field, "missing required field")
            return []
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of strings, got {json_type(value)}")
        if required and not value:
            raise self.error(field, "expected a non-empty list of strings, got an empty list")
        if len(value) > self.limits.max_list_items:
            raise DatasetTooLargeError(
                self.file,
                f"list has {len(value)} items, the limit is {self.limits.max_list_items}",
                line=self.line,
                field=field,
            )
        out: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(field, f"expected a list of strings, item {index} is {json_type(item)}")
            if not item.strip():
                raise self.error(field, f"item {index} is an empty string")
            out.append(self.text(item, field))
        return out

    def scores(self, field: str, texts_field: str, expected: int) -> list[float] | None:
        value = self.obj.get(field)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of numbers, got {json_type(value)}")
        out: list[float] = []
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise self.error(field, f"expected a list of numbers, item {index} is {json_type(item)}")
            if not math.isfinite(item):
                raise self.error(field, f"item {index} is not a finite number")
            out.append(float(item))
        if len(out) != expected:
            raise self.error(
                field,
                f"has {len(out)} scores but '{texts_field}' has {expected} passages; lengths must match",
            )
        return out


def parse_training_jsonl(path: Path, file_label: str, limits: ParseLimits) -> list[TrainingExample]:
    """Read and validate a training JSONL file; raises DatasetFormatError naming file, line and field."""
    examples: list[TrainingExample] = []
    for lineno, text in iter_lines(path, file_label, limits):
        obj = parse_json_object(text, file_label, lineno)
        line = _Line(obj, file_label, lineno, limits)
        if "query" not in obj:
            raise line.error("query", "missing required field")
        query = line.text(obj["query"], "query")
        pos = line.text_list("pos", required=True)
        neg = line.text_list("neg", required=False)
        pos_scores = line.scores("pos_scores", "pos", len(pos))
        neg_scores = line.scores("neg_scores", "neg", len(neg))
        prompt_value = obj.get("prompt")
        prompt: str | None = None
        if prompt_value is not None:
            if not isinstance(prompt_value, str):
                raise line.error("prompt", f"expected a string, got {json_type(prompt_value)}")
            prompt = line.text(prompt_value, "prompt") if prompt_value.strip() else None
        examples.append(
            TrainingExample(query=query, pos=pos, neg=neg, pos_scores=pos_scores, neg_scores=neg_scores, prompt=prompt)
        )
    if not examples:
        raise DatasetFormatError(file_label, "file contains no training examples")
    return examples
