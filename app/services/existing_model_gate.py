"""A ``serving_backend`` job: the end-of-job 1% gate, run on a model that already exists.

A model uploaded, or trained while ``RETUNE_SERVING_BACKENDS`` was empty, is served by torch fp32. This
job gates it on a dataset's validation queries the way a finishing job gates its own model
(:func:`app.services.serving_backend.choose_for_job`), then publishes the folder again with the chosen
backend's export and ``serving_backend.json``. A published artifact is never changed in place (readers
see a whole folder or none), so the copy goes under a new key, the model row is repointed in the
transaction that ends the job, and the old folder is removed after it. Serving processes load the new
folder at their next request: their cache is keyed by the model's path.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from app.core.config import Settings
from app.db.session import session_scope
from app.db.tables import Job, Model
from app.retrieval.embedder import EmbedderConfig
from app.services import storage
from app.services.artifacts import ArtifactStore
from app.services.job_observer import SqlObserver
from app.services.serving_backend import choose_for_job
from app.training.data import PreparedData
from app.training.params import ServingBackendParams

log = logging.getLogger(__name__)

# What a gate tries when neither the job nor RETUNE_SERVING_BACKENDS names backends: the int8 exports
# first (the fast ones, when they keep the quality), then the fp32 exports, all on CPU.
DEFAULT_CANDIDATES = ["onnx-int8", "openvino-int8", "torch-int8", "openvino-fp32", "onnx-fp32"]


def gate_settings(settings: Settings, params: ServingBackendParams) -> Settings:
    """The worker's settings with the job's backends, tolerance and speed floor in place of the service-wide ones."""
    backends = params.backends or settings.serving_backends or DEFAULT_CANDIDATES
    tolerance = settings.serving_gate_tolerance if params.tolerance is None else params.tolerance
    speedup = settings.serving_gate_min_speedup if params.min_speedup is None else params.min_speedup
    update = {"serving_backends": backends, "serving_gate_tolerance": tolerance, "serving_gate_min_speedup": speedup}
    return settings.model_copy(update=update)


def gate_existing_model(
    job: Job, settings: Settings, observer: SqlObserver, store: ArtifactStore, work_dir: Path,
    data: PreparedData, model: Model, first_stage: tuple[str, EmbedderConfig],
) -> str:  # fmt: skip
    """Gate ``model`` on ``data``'s validation queries and publish it on the chosen backend; the job's end."""
    params = ServingBackendParams(**job.params)
    observer.on_message(
        f"attempt {job.attempts}: choosing the serving backend of {model.kind} {model.id} on "
        f"{len(data.validation_queries)} validation queries ({data.validation_label}); nothing is trained"
    )
    staged = _staged_copy(store, model.path, work_dir)
    choice = choose_for_job(gate_settings(settings, params), model.kind, staged, dict(model.config or {}), data,
                            observer, first_stage, params.rerank_k)  # fmt: skip
    if choice is None:
        raise ValueError(
            "no judged validation queries to gate on: name eval.validation_split, or give the dataset more "
            "training queries (a share of them is set aside for validation)"
        )
    new_key = f"{storage.model_rel(model.id)}-{job.id[:8]}-{job.attempts}"
    store.publish_dir(staged, new_key)
    observer.repoint_model(model.id, model.path, new_key)
    try:
        finished = observer.finish("succeeded", settings.db_outage_seconds)
    except BaseException:
        store.remove(new_key)
        raise
    if not finished:
        store.remove(new_key)  # the resumed attempt gates again
        return "left running"
    _remove_superseded(store, model.id, model.path, new_key)
    return "succeeded"


def _staged_copy(store: ArtifactStore, key: str, work_dir: Path) -> Path:
    """A private copy of the model's folder to export into; the stored one stays as it is until replaced."""
    staged = work_dir / "model"
    shutil.rmtree(staged, ignore_errors=True)
    source = store.local_copy(key)
    if not source.is_dir():
        raise ValueError(f"the model's files ({key}) are missing from the artifact store")
    shutil.copytree(source, staged)
    return staged


def _remove_superseded(store: ArtifactStore, model_id: str, old_key: str, new_key: str) -> None:
    """After the commit: the folder the row no longer names goes (the new one, if the model was deleted
    meanwhile). A failure here leaves an unused folder behind, never a model without files."""
    try:
        with session_scope() as s:
            row = s.get(Model, model_id)
            current = row.path if row is not None else None
        store.remove(old_key if current == new_key else new_key)
    except Exception:
        log.warning("model %s: could not remove the superseded folder", model_id, exc_info=True)
