"""The connection every command uses: `--url` / `--key` (or RETUNE_URL / RETUNE_API_KEY) over the saved login."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from app.client.api import ApiClient, ApiError
from app.client.config import load_credentials

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts).")]


@dataclass
class Overrides:
    url: str | None = None
    key: str | None = None


overrides = Overrides()


def get_api() -> ApiClient:
    saved = load_credentials()
    url = overrides.url or (saved.url if saved else None)
    key = overrides.key or (saved.key if saved else None)
    if not url:
        raise ApiError("not logged in: run `retune login URL` (or set RETUNE_URL and RETUNE_API_KEY)")
    return ApiClient(url, key)


@contextmanager
def as_archive(path: Path, fmt: str = "zip") -> Iterator[Path]:
    """A file as it is; a folder archived on the fly into a temporary file (with the folder as its top entry)."""
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist")
    if path.is_file():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="retune-") as tmp:
        folder = path.resolve()
        base = Path(tmp) / folder.name
        yield Path(shutil.make_archive(str(base), fmt, root_dir=folder.parent, base_dir=folder.name))
