"""Uploads and downloads with a progress bar (rich's file wrapper; httpx streams the file in chunks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.client.api import ApiClient
from app.client.output import err_console


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )


def upload(api: ApiClient, endpoint: str, file: Path, form: dict[str, str], quiet: bool = False) -> Any:
    """POST ``file`` as multipart field ``file`` (plus ``form`` fields); the bar follows the bytes httpx reads."""
    with _progress(quiet) as progress, file.open("rb") as raw:
        reader = progress.wrap_file(raw, total=file.stat().st_size, description=f"upload {file.name}")
        return api.json("POST", endpoint, files={"file": (file.name, reader)}, data=form)


def download(api: ApiClient, endpoint: str, target: Path, params: dict[str, str], quiet: bool = False) -> Path:
    """Stream a GET to ``target`` (never whole in memory); a partial file is removed if the transfer fails."""
    tmp = target.with_name(target.name + ".part")
    try:
        with api.stream("GET", endpoint, params=params) as response, _progress(quiet) as progress:
            size = response.headers.get("content-length")
            task = progress.add_task(f"download {target.name}", total=int(size) if size else None)
            with tmp.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    progress.advance(task, len(chunk))
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
