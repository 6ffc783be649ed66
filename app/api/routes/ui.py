"""The dashboard's files at /ui: served without a key (the page asks for one and sends it as a Bearer header)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.ui import STATIC_DIR


def mount_ui(app: FastAPI) -> None:
    """Mount the static dashboard; a Mount (not an APIRouter) so it stays out of the OpenAPI schema."""
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
