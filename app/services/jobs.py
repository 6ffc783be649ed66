"""Jobs (fine-tuning, mining, backend gating): validation, queueing, status, cancellation and metrics."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from app.db.session import session_scope
from app.db.tables import Job, JobEvent, MetricPoint, Model, utcnow
from app.services import dispatch, events, memory_guard, storage
from app.services.datasets import get_dataset
from app.services.lookup import get_or_404
from app.services.model_refs import resolve_model
from app.services.models import BUNDLED_MODEL_ID, model_path, resolve_base_model
from app.services.provenance import check_evaluation_queries
from app.training.params import EmbedderParams, MiningParams, RerankerParams, ServingBackendParams

log = logging.getLogger(__name__)

PARAMS_BY_KIND = {
    "embedder": EmbedderParams,
    "reranker": RerankerParams,
    "mine_negatives": MiningParams,
    "serving_backend": ServingBackendParams,
}
FINAL_STATUSES = {"succeeded", "failed", "cancelled"}
EVALUATED_KINDS = frozenset({"embedder", "reranker"})  # the kinds that report test figures


def validate_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return PARAMS_BY_KIND[kind].model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(f"params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequestError(problems) from exc


def validate_eval(dataset_format: str, stats: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The stored eval spec has exactly the fields of app.training.data.EvalSpec."""
    split, fraction = spec.get("split"), spec.get("holdout_fraction")
    seed = int(spec.get("seed", 42))
    sampling = {k: spec[k] for k in ("max_queries", "max_corpus_docs", "max_validation_queries") if spec.get(k)}
    sampling |= _validation_fields(dataset_format, stats, spec)
    if split and fraction:
        raise InvalidRequestError("eval: give either 'split' or 'holdout_fraction', not both")
    if split:
        splits = set((stats.get("qrels") or {}).keys())
        if dataset_format != "beir" or split not in splits:
            raise InvalidRequestError(f"eval.split '{split}': the dataset has no such split (it has: {sorted(splits)})")
        return {"split": split, "seed": seed, **sampling}
    fraction = 0.2 if fraction is None else float(fraction)
    if not 0.0 < fraction < 1.0:
        raise InvalidRequestError("eval.holdout_fraction must be between 0 and 1 (exclusive)")
    return {"holdout_fraction": fraction, "seed": seed, **sampling}


def _validation_fields(dataset_format: str, stats: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Where the validation queries come from: a named split, or a share of the training queries."""
    name, fraction = spec.get("validation_split"), spec.get("validation_fraction")
    if name and fraction is not None:
        raise InvalidRequestError("eval: give either 'validation_split' or 'validation_fraction', not both")
    if name:
        splits = set((stats.get("qrels") or {}).keys())
        if dataset_format != "beir" or name not in splits:
            raise InvalidRequestError(
                f"eval.validation_split '{name}': the dataset has no such split ({sorted(splits)})"
            )
        if name == spec.get("split"):
            raise InvalidRequestError("eval.validation_split must differ from eval.split (the test queries)")
        return {"validation_split": name}
    if fraction is not None:
        if not 0.0 < float(fraction) <= 0.5:
            raise InvalidRequestError("eval.validation_fraction must be in (0, 0.5]")
        return {"validation_fraction": float(fraction)}
    return {}


def _candidate_row(session: Session, settings: Settings, clean_params: dict[str, Any]) -> Model | None:
    """A reranker job's first-stage embedder (the bundled one by default), resolved once: its kind is
    checked here, and its provenance with the base model's."""
    reference = clean_params.get("candidate_model")
    if not reference:
        return resolve_base_model(session, settings, BUNDLED_MODEL_ID)[1]
    _, candidate = resolve_base_model(session, settings, reference, field="params.candidate_model")
    if candidate is not None and candidate.kind != "embedder":
        raise InvalidRequestError("params.candidate_model must be an embedder")
    return candidate


def _job_models(
    session: Session, settings: Settings, kind: str, base_model: str | None, clean_params: dict[str, Any]
) -> tuple[str, str, dict[str, Model | None]]:
    """The job's base reference and path, and the models whose trained queries its evaluation must avoid."""
    if kind == "serving_backend":
        gated = _gated_model(session, settings, base_model, clean_params)
        return gated.id, model_path(settings, gated), {}
    base = base_model or settings.default_base_model
    base_path, base_row = resolve_base_model(session, settings, base)
    if kind in ("embedder", "mine_negatives") and base_row is not None and base_row.kind != "embedder":
        raise InvalidRequestError(f"base_model '{base}' is a {base_row.kind}, not an embedder")
    models: dict[str, Model | None] = {"base_model": base_row}
    if kind == "reranker":
        models["params.candidate_model"] = _candidate_row(session, settings, clean_params)
    return base, base_path, models


def _gated_model(session: Session, settings: Settings, reference: str | None, clean_params: dict[str, Any]) -> Model:
    """A ``serving_backend`` job's model: one Retune stores (the bundled one is a package folder, not an
    artifact it could publish again); a reranker's first stage is checked as a reranker job's is.

    No provenance check: the gate compares the model with itself on another runtime, a paired change that
    queries the model was trained on do not bias the way they bias a verdict against a base model."""
    if not reference:
        raise InvalidRequestError("base_model: name the Retune model whose serving backend to choose")
    try:
        row = resolve_model(session, reference)
    except NotFoundError as exc:
        raise InvalidRequestError(f"base_model '{reference}': no Retune model has this id or name") from exc
    if row.source == "bundled":
        raise InvalidRequestError(
            f"base_model '{reference}' is bundled with Retune, not a stored artifact: upload a copy (POST /models) "
            "and gate that"
        )
    if row.kind == "reranker":
        _candidate_row(session, settings, clean_params)
    return row


def create_job(
    session: Session,
    settings: Settings,
    kind: str,
    dataset_id: str,
    base_model: str | None,
    eval_spec: dict[str, Any],
    params: dict[str, Any],
    allow_overlap: bool = False,
) -> Job:
    dataset = get_dataset(session, dataset_id)
    clean_params = validate_params(kind, params)
    if kind == "mine_negatives":
        if eval_spec:
            raise InvalidRequestError(
                "eval: a mine_negatives job evaluates nothing; leave 'eval' out "
                "(the jobs that train on the new dataset evaluate)"
            )
        clean_eval: dict[str, Any] = {}
    else:
        clean_eval = validate_eval(dataset.format, dataset.stats, eval_spec)
    train_split = clean_params["train_split"]
    if dataset.format == "beir" and train_split not in (dataset.stats.get("qrels") or {}):
        raise InvalidRequestError(f"params.train_split '{train_split}': the dataset has no such split")
    base, base_path, models = _job_models(session, settings, kind, base_model, clean_params)
    memory_guard.check_fits(kind, clean_params, base_path, settings)

    if kind in EVALUATED_KINDS and check_evaluation_queries(
        session, settings, dataset, clean_eval, clean_params, models, allow_overlap
    ):
        clean_eval["contaminated"] = True
    job = Job(kind=kind, dataset_id=dataset.id, base_model=base, params=clean_params, eval=clean_eval)
    session.add(job)
    session.flush()
    events.add_status_event(session, job.id, "queued")
    session.commit()
    try:
        dispatch.enqueue_job(job.id, job.kind)
    except ServiceUnavailableError:
        # The job is in SQL; the broker only carries the doorbell. The recovery sweep sends a queued job
        # never sent (dispatched_at NULL) once the broker answers, so a broker restart does not turn an
        # accepted job into a failed one (seen building bench/chaos_soak.py).
        log.warning("job %s: the task queue is unreachable; the recovery sweep will send it", job.id)
        return job
    job.dispatched_at = utcnow()
    session.commit()
    return job


def list_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc())))


def get_job(session: Session, job_id: str) -> Job:
    return get_or_404(session, Job, job_id, "job")


def cancel_job(session: Session, job_id: str) -> Job:
    """Queued jobs stop at once; a running job is stopped by its worker at its next check: a training
    step, a chunk of the corpus encoding, a query of a reranker evaluation, or between two phases."""
    job = get_job(session, job_id)
    if job.status in FINAL_STATUSES:
        raise ConflictError(f"job '{job_id}' already {job.status}")
    already, job.cancel_requested = job.cancel_requested, True
    if job.status == "queued":
        job.status, job.finished_at, job.message = "cancelled", utcnow(), "cancelled before it started"
        events.add_status_event(session, job_id, "cancelled", job.message)
    elif not already:
        events.add_event(session, job_id, "message", "cancel requested: the job stops at its next check")
    session.commit()
    return job


def job_metrics(
    session: Session, job_id: str, after_step: int | None = None, names: list[str] | None = None
) -> list[MetricPoint]:
    """Metric points in the order recorded; ``after_step`` keeps steps above it, ``names`` those names."""
    get_job(session, job_id)
    stmt = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if after_step is not None:
        stmt = stmt.where(MetricPoint.step > after_step)
    if names:
        stmt = stmt.where(MetricPoint.name.in_(names))
    return list(session.scalars(stmt.order_by(MetricPoint.id)))


def delete_job(session: Session, settings: Settings, job_id: str) -> None:
    """A finished job with its metrics, events and work files; the model or dataset it produced stays."""
    job = get_job(session, job_id)
    if job.status not in FINAL_STATUSES:
        raise ConflictError(f"job '{job_id}' is {job.status}; cancel it and wait until it stops before deleting it")
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    session.delete(job)
    session.commit()
    storage.store(settings).remove_work(job_id)


def estimated_finish(job: Job, now: datetime | None = None) -> datetime | None:
    """A running job's finish time at its step rate since it started (None until a step is done)."""
    if job.status != "running" or not job.started_at or not job.total_steps or job.step <= 0:
        return None
    elapsed = (now or utcnow()) - job.started_at
    return job.started_at + elapsed * (job.total_steps / job.step)


class JobFailedError(RuntimeError):
    """Raised by the worker's task after the job was marked failed, so Celery logs the task as failed."""


def raise_if_failed(job_id: str) -> None:
    """The task's outcome for Celery: the job was already marked failed (and its task is acked, never
    retried: a redelivered copy finds the job finished and does nothing)."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is not None and job.status == "failed":
            raise JobFailedError(f"job {job_id} failed: {(job.error or '').splitlines()[0] if job.error else ''}")
