"""Retune's one error shape, ``{detail, field?, file?, line?}``, for request validation errors too.

FastAPI answers a bad request with pydantic's list of problems; Retune's own routes answer one sentence
naming each bad field (``params.batch_size: Input should be greater than or equal to 2``) and the first
bad field's dotted path in ``field``. Routes of other API families (OpenAI-, TEI-compatible, ...) keep
their own shapes: ``is_retune_route`` says which paths this handler leaves alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

FOREIGN_PREFIXES = ("/v1", "/v2", "/tei")
_LOCATIONS = {"body", "query", "path", "header", "cookie"}
# Error types meaning the body could not be parsed at all: 400, as the schema documents it.
UNPARSABLE = {"json_invalid", "model_attributes_type"}


def is_retune_route(path: str) -> bool:
    """False for the paths of other API families, which shape their errors themselves."""
    return not any(path == prefix or path.startswith(prefix + "/") for prefix in FOREIGN_PREFIXES)


def dotted_field(loc: Sequence[Any], tags: frozenset[str] = frozenset()) -> str:
    """``("body", "params", "batch_size")`` -> ``"params.batch_size"``; union tags (``kind``) dropped."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(p for p in parts if p not in tags) or (str(loc[0]) if loc else "body")


def _field_of(error: dict[str, Any], tags: frozenset[str]) -> str:
    """A bad or missing union tag is the tag field's fault (``kind``), not the whole body's."""
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        parent = dotted_field(error["loc"], tags) if len(error["loc"]) > 1 else ""
        return f"{parent}.kind" if parent else "kind"
    return dotted_field(error["loc"], tags)


def validation_response(exc: RequestValidationError, tags: frozenset[str] = frozenset()) -> JSONResponse:
    errors = list(exc.errors())
    if not errors:
        return JSONResponse({"detail": "invalid request"}, status_code=422)
    if any(e["type"] in UNPARSABLE and len(e["loc"]) <= 2 for e in errors):
        return JSONResponse({"detail": f"the body could not be parsed: {errors[0]['msg']}"}, status_code=400)
    fields = [_field_of(e, tags) for e in errors]
    problems = [f"{field}: {e['msg']}" for field, e in zip(fields, errors, strict=True)]
    body = {"detail": "; ".join(problems), "field": fields[0]}
    status = 422
    return JSONResponse(body, status_code=status)
