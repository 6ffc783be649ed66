"""The FastAPI application: routers, and one mapping from each user-fixable error to HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.api import compat_errors
from app.api.errors import is_retune_route, validation_response
from app.api.routes import (
    cohere_compat,
    datasets,
    health,
    indexes,
    jobs,
    keys,
    models,
    openai_compat,
    search,
    tei_compat,
)
from app.api.routes import metrics as metrics_route
from app.api.routes.ui import mount_ui
from app.api.schemas import ERROR_RESPONSES, JOB_KINDS
from app.core.config import get_settings
from app.core.errors import RetuneError
from app.db.session import session_scope
from app.ingest import DatasetFormatError, DatasetTooLargeError
from app.retrieval.device import configure_threads
from app.services import api_keys, telemetry
from app.services.models import ensure_bundled_models

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    settings.ensure_dirs()
    configure_threads(settings.torch_threads)
    with session_scope() as session:
        ensure_bundled_models(session)
        if settings.bootstrap_key:
            api_keys.ensure_bootstrap_key(session, settings.bootstrap_key)
        elif not api_keys.has_active_admin(session):
            # Nothing is open by default: the first start makes an admin key and shows it once.
            _, key = api_keys.create_key(session, "first-admin", "admin")
            print(f"\n  Retune admin API key (shown once, store it): {key}\n", flush=True)
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        responses=ERROR_RESPONSES,
        title="Retune",
        version="0.1.0",
        description="Fine-tune text retrieval models (bi-encoders, rerankers) and serve two-stage search.",
        lifespan=lifespan,
    )
    for module in (health, datasets, models, jobs, indexes, search, keys):
        app.include_router(module.router)
    app.include_router(indexes.aliases)
    for module in (openai_compat, cohere_compat, tei_compat):
        app.include_router(module.router)

    mount_ui(app)

    app.include_router(metrics_route.router)

    @app.middleware("http")
    async def _observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        """te_request_count / te_request_duration by route template (unmatched paths share one label)."""
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "<unmatched>"
        telemetry.observe_request(request.method, template, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if not is_retune_route(request.url.path):
            return await request_validation_exception_handler(request, exc)
        return validation_response(exc, JOB_KINDS)

    @app.exception_handler(RetuneError)
    async def _retune_error(_: Request, exc: RetuneError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DatasetFormatError)
    async def _dataset_error(_: Request, exc: DatasetFormatError) -> JSONResponse:
        code = 413 if isinstance(exc, DatasetTooLargeError) else 422
        body = {"detail": str(exc), "file": exc.file, "line": exc.line, "field": exc.field}
        return JSONResponse(body, status_code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path served by several routes needs all.
            scope = dict(request.scope)
            allowed = sorted(
                {
                    m
                    for r in app.routes
                    if isinstance(r, APIRoute)
                    for m in r.methods
                    if r.matches(scope)[0] != Match.NONE
                }
            )
            return JSONResponse(
                {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)}
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse({"detail": "the database is unavailable; retry shortly"}, status_code=503)

    compat_errors.install(app)  # last: errors on /v1, /v2, /tei paths in those APIs' shapes
    return app


app = create_app()
