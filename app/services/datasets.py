"""Dataset uploads: validate completely in a staging folder, then publish atomically.

Nothing is half-stored: the files are moved into place only after the whole upload parsed, and
the row is written only after the move; if the row cannot be written the files are removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidRequestError
from app.db.tables import Dataset, Index, Job, new_id
from app.ingest import (
    DatasetTooLargeError,
    ParseLimits,
    TrainingExample,
    extract_archive,
    find_beir_root,
    parse_beir_dir,
    parse_training_jsonl,
    read_training_examples,
    training_examples_to_retrieval_set,
    write_retrieval_set,
    write_training_examples,
)
from app.services import storage
from app.services.lookup import get_or_404
from app.training.data import MINED_TEACHER

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
CHUNK = 1 << 20


def limits_from(settings: Settings) -> ParseLimits:
    return ParseLimits(
        max_bytes=settings.max_upload_bytes,
        max_lines=settings.max_upload_lines,
        max_text_chars=settings.max_text_chars,
    )


def _detect_format(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".jsonl"):
        return "training_jsonl"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "beir"
    raise InvalidRequestError(
        f"{filename or 'the upload'}: unsupported file type; send a .jsonl training file "
        "or a .zip / .tar.gz of a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
    )


def _copy_bounded(source: BinaryIO, target: Path, label: str, max_bytes: int) -> None:
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise DatasetTooLargeError(label, f"upload is larger than the limit of {max_bytes} bytes")
            out.write(chunk)


def create_dataset(session: Session, settings: Settings, source: BinaryIO, filename: str, name: str | None) -> Dataset:
    # The client's file name only picks the format and labels errors; it never becomes a path.
    label = Path(filename or "upload").name
    dataset_format = _detect_format(label)
    limits = limits_from(settings)
    staging = storage.staging_dir(settings)
    try:
        upload = staging / ("upload.jsonl" if dataset_format == "training_jsonl" else "upload.archive")
        _copy_bounded(source, upload, label, settings.max_upload_bytes)
        out = staging / "dataset"
        if dataset_format == "training_jsonl":
            examples = parse_training_jsonl(upload, label, limits)
            rs = training_examples_to_retrieval_set(examples)
            write_training_examples(examples, out)
            stats = rs.stats() | {"examples": len(examples)}
        else:
            extract_archive(upload, label, staging / "extracted", limits)
            rs = parse_beir_dir(find_beir_root(staging / "extracted"), limits)
            write_retrieval_set(rs, out)
            stats = rs.stats()
        dataset_id = new_id()
        (out / "dataset.json").write_text(json.dumps({"format": dataset_format, "source": label}))
        storage.store(settings).publish_dir(out, storage.dataset_rel(dataset_id))
    finally:
        storage.remove(staging)

    row = Dataset(
        id=dataset_id,
        name=(name or Path(label).stem.removesuffix(".tar"))[:200],
        format=dataset_format,
        path=storage.dataset_rel(dataset_id),
        stats=stats,
    )
    storage.publish(session, settings, row, row.path)
    return row


def store_training_examples(
    settings: Settings, examples: list[TrainingExample], source: str, source_query_ids: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """Publish the files of a training_jsonl dataset the service made itself (mined negatives).

    Staged, read back through the same parser as an upload (so what is published is what jobs will
    read, and the stats are an upload's), then moved into place. Returns (dataset id, stats); the
    caller writes the row, and removes the key ``storage.dataset_rel(id)`` from the store if it cannot.
    """
    staging = storage.staging_dir(settings)
    try:
        out = staging / "dataset"
        write_training_examples(examples, out)
        stored = read_training_examples(out)
        stats = training_examples_to_retrieval_set(stored).stats() | {"examples": len(stored)}
        # The source dataset's query ids by query text: the file itself stores texts only.
        (out / "dataset.json").write_text(json.dumps(
            {"format": "training_jsonl", "source": source, "teacher_scores": MINED_TEACHER,
             "source_query_ids": source_query_ids or {}}
        ))  # fmt: skip
        dataset_id = new_id()
        storage.store(settings).publish_dir(out, storage.dataset_rel(dataset_id))
    finally:
        storage.remove(staging)
    return dataset_id, stats


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.created_at.desc())))


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    return get_or_404(session, Dataset, dataset_id, "dataset")


def delete_dataset(session: Session, settings: Settings, dataset_id: str) -> None:
    row = get_dataset(session, dataset_id)
    users = session.scalar(select(Job.id).where(Job.dataset_id == dataset_id).limit(1)) or session.scalar(
        select(Index.id).where(Index.dataset_id == dataset_id).limit(1)
    )
    if users:
        raise ConflictError(f"dataset '{dataset_id}' is used by jobs or indexes; delete those first")
    storage.delete_with_files(session, settings, row, row.path, f"dataset '{dataset_id}'")
