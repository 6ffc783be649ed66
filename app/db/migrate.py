"""Bring a database to the newest schema with Alembic (used at start-up and by tests)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """SQLite has no advisory locks: processes migrating the same file take turns on a lock file."""
    db_file = make_url(url).database
    if not db_file or db_file == ":memory:":
        yield
        return
    with open(f"{db_file}.migrate-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade_to_head(url: str | None = None) -> None:
    from app.core.config import get_settings

    url = url or get_settings().resolved_database_url
    lock = _sqlite_file_lock(url) if url.startswith("sqlite") else nullcontext()
    with lock:
        _upgrade(url)


def _upgrade(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logger"] = False
    cfg.attributes["url"] = url
    command.upgrade(cfg, "head")
