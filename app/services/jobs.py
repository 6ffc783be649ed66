"""Fine-tuning jobs: validation, queueing, status, cancellation and metrics."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidRequestError
from app.core.queue import RUN_JOB
from app.db.tables import Job, MetricPoint, utcnow
from app.services import dispatch, memory_guard
from app.services.datasets import get_dataset
from app.services.lookup import get_or_404
from app.services.models import resolve_base_model
from app.training.params import EmbedderParams, MiningParams, RerankerParams

PARAMS_BY_KIND = {"embedder": EmbedderParams, "reranker": RerankerParams, "mine_negatives": MiningParams}
FINAL_STATUSES = {"succeeded", "failed", "cancelled"}


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
    sampling = {k: spec[k] for k in ("max_queries", "max_corpus_docs") if spec.get(k)}
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


def create_job(
    session: Session,
    settings: Settings,
    kind: str,
    dataset_id: str,
    base_model: str | None,
    eval_spec: dict[str, Any],
    params: dict[str, Any],
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
    base = base_model or settings.default_base_model
    _, base_row = resolve_base_model(session, settings, base)
    if kind in ("embedder", "mine_negatives") and base_row is not None and base_row.kind != "embedder":
        raise InvalidRequestError(f"base_model '{base}' is a {base_row.kind}, not an embedder")
    if kind == "reranker" and clean_params.get("candidate_model"):
        _, candidate = resolve_base_model(session, settings, clean_params["candidate_model"])
        if candidate is not None and candidate.kind != "embedder":
            raise InvalidRequestError("params.candidate_model must be an embedder")
    memory_guard.check_fits(kind, clean_params, resolve_base_model(session, settings, base)[0], settings)

    job = Job(kind=kind, dataset_id=dataset.id, base_model=base, params=clean_params, eval=clean_eval)
    session.add(job)
    session.commit()
    try:
        dispatch.enqueue(RUN_JOB, job.id)
        job.dispatched_at = utcnow()
        session.commit()
    except Exception:
        job.status, job.error, job.finished_at = "failed", "could not be queued: the broker is unreachable", utcnow()
        session.commit()
        raise
    return job


def list_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc())))


def get_job(session: Session, job_id: str) -> Job:
    return get_or_404(session, Job, job_id, "job")


def cancel_job(session: Session, job_id: str) -> Job:
    """Queued jobs stop at once; a running job is stopped by its worker at the next step."""
    job = get_job(session, job_id)
    if job.status in FINAL_STATUSES:
        raise ConflictError(f"job '{job_id}' already {job.status}")
    job.cancel_requested = True
    if job.status == "queued":
        job.status, job.finished_at, job.message = "cancelled", utcnow(), "cancelled before it started"
    session.commit()
    return job


def job_metrics(session: Session, job_id: str) -> list[MetricPoint]:
    get_job(session, job_id)
    return list(session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id)))
