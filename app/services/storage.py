"""Artifact keys and the publish rule. Keys in SQL (``datasets/ID``, ``models/ID``, ``indexes/ID``) name
folders in the artifact store (app/services/artifacts.py), so a volume or a bucket can move."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.tables import Base
from app.services.artifacts import ArtifactStore, get_store


def store(settings: Settings) -> ArtifactStore:
    return get_store(settings)


def dataset_rel(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def model_rel(model_id: str) -> str:
    return f"models/{model_id}"


def index_rel(index_id: str) -> str:
    return f"indexes/{index_id}"


def local_copy(settings: Settings, key: str) -> Path:
    """The artifact's folder on this machine (fetched into the cache when the store is remote)."""
    return get_store(settings).local_copy(key)


def staging_dir(settings: Settings) -> Path:
    """A fresh scratch folder on the data dir's file system, so a local publish is an atomic rename."""
    path = settings.data_dir / "tmp" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def publish(session: Session, settings: Settings, row: Base, key: str) -> None:
    """Commit a row whose files are already published under ``key``; without the row, the files go too
    (so a failed commit never leaves files that no row names)."""
    try:
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        get_store(settings).remove(key)
        raise


def delete_with_files(session: Session, settings: Settings, row: Base, key: str, label: str) -> None:
    """Delete a row, then its files; a foreign key still pointing at it is a 409 and keeps both."""
    from sqlalchemy.exc import IntegrityError

    from app.core.errors import ConflictError

    session.delete(row)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"{label} is in use") from exc
    get_store(settings).remove(key)
