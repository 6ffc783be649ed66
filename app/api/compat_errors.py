"""Errors on the compatible routes, in the shape each family's clients parse.

The app's handlers decide status and message once; on ``/v1`` (OpenAI; ``/v1/rerank`` is Cohere's),
``/v2`` (Cohere) and ``/tei`` paths their answer is re-shaped: OpenAI ``{"error": {message, type, param,
code}}``, Cohere ``{"message"}``, TEI ``{"error", "error_type"}``. Auth errors (401/403) included.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

KEPT_HEADERS = ("www-authenticate", "allow", "retry-after")
# 429: what OpenAI answers past a requests-per-minute limit ({"type": "requests", "code": "rate_limit_exceeded"}).
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 429: "requests"}
OPENAI_CODES = {429: "rate_limit_exceeded"}


def family(path: str) -> str | None:
    if path in ("/v1/rerank", "/v2/rerank") or path.startswith("/v2/"):
        return "cohere"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/tei/"):
        return "tei"
    return None


def _message(detail: Any) -> tuple[str, str | None]:
    """A sentence from the app's ``detail`` (FastAPI's validation list becomes 'field: problem; ...')."""
    if isinstance(detail, list) and detail:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in detail]
        loc = detail[0].get("loc", ())
        return "; ".join(parts), str(loc[1]) if len(loc) > 1 else None
    return str(detail), None


def shaped(kind: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    if kind == "openai":
        error_type = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        code = "model_not_found" if status == 404 and message.startswith("model") else OPENAI_CODES.get(status)
        return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    if kind == "tei":
        return {"error": message, "error_type": _tei_type(status)}
    return {"message": message}


def _tei_type(status: int) -> str:
    """TEI's ``error_type``: "overloaded" is its answer (429) when its queue is full."""
    if status == 429:
        return "overloaded"
    return "backend" if status >= 500 else "unauthorized" if status in (401, 403) else "validation"


def _wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
    async def reshape(request: Request, exc: Exception) -> Response:
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        kind = family(request.url.path)
        if kind is None or not isinstance(response, JSONResponse):
            return response
        try:
            detail = json.loads(bytes(response.body)).get("detail")
        except (ValueError, AttributeError):
            return response
        message, param = _message(detail)
        headers = {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
        body = shaped(kind, response.status_code, message, param)
        return JSONResponse(body, status_code=response.status_code, headers=headers)

    return reshape


def install(app: FastAPI) -> None:
    """Wrap every registered exception handler; call after the app's own handlers are registered."""
    for key, handler in list(app.exception_handlers.items()):
        app.exception_handlers[key] = _wrap(handler)
