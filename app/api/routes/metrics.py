"""``GET /metrics`` for Prometheus: an admin key, or a client from a ``RETUNE_METRICS_ALLOW`` network."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from app.api.deps import DbSession, SettingsDep, bearer
from app.services import api_keys, telemetry

router = APIRouter(tags=["metrics"])


def _from_allowed_network(request: Request, networks: list[str]) -> bool:
    if not networks or request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


def metrics_access(
    request: Request,
    db: DbSession,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Scrapers inside a trusted network need no key; anyone else needs an admin key (401 / 403)."""
    if _from_allowed_network(request, settings.metrics_allow):
        return
    api_keys.authenticate(db, credentials.credentials if credentials else None, "admin")


@router.get(
    "/metrics",
    dependencies=[Depends(metrics_access)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics() -> Response:
    """Prometheus text exposition: requests, latencies, /search stages, jobs, queue depth, workers."""
    body, content_type = telemetry.exposition()
    return Response(body, media_type=content_type)
