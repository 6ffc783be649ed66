"""Where files live under the data dir. Paths in SQL are relative to it, so a volume can move."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.tables import Base


def absolute(settings: Settings, relative: str) -> Path:
    return (settings.data_dir / relative).resolve()


def dataset_rel(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def model_rel(model_id: str) -> str:
    return f"models/{model_id}"


def index_rel(index_id: str) -> str:
    return f"indexes/{index_id}"


def job_work_dir(settings: Settings, job_id: str) -> Path:
    """Checkpoints and resume state of a running job; kept across worker deaths, removed when it ends."""
    path = settings.data_dir / "work" / job_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def staging_dir(settings: Settings) -> Path:
    """A fresh scratch folder on the same file system, so the final move is an atomic rename."""
    path = settings.data_dir / "tmp" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def publish(session: Session, row: Base, final: Path) -> None:
    """Commit a row whose files are already in place at ``final``; without the row, the files go too
    (so a failed commit never leaves files that no row names)."""
    try:
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        remove(final)
        raise


def delete_with_files(session: Session, row: Base, path: Path, label: str) -> None:
    """Delete a row, then its files; a foreign key still pointing at it is a 409 and keeps both."""
    from sqlalchemy.exc import IntegrityError

    from app.core.errors import ConflictError

    session.delete(row)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"{label} is in use") from exc
    remove(path)
