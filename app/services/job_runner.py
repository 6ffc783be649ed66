"""Runs one job inside a worker: prepares data, calls the engine, stores metrics and the model.

The engine reports through :class:`SqlObserver` (app.services.job_observer), which writes each metric
at once while the database is reachable and buffers them in order while it is not: only a real error
of the job fails it, and no failure deletes its checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import threading
import traceback
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update

from app.core.config import Settings, get_settings
from app.db.session import session_scope
from app.db.tables import Dataset, Index, Job, new_id, utcnow
from app.evaluation.retrieval import KnownVectors
from app.ingest import DatasetFormatError
from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.services import events, memory_guard, storage
from app.services.artifacts import ArtifactStore
from app.services.corpus_reuse import index_vectors
from app.services.datasets import store_training_examples
from app.services.existing_model_gate import gate_existing_model
from app.services.job_observer import SqlObserver
from app.services.models import BUNDLED_MODEL_ID, resolve_base_model
from app.services.provenance import trained_hashes, write_provenance
from app.services.serving_backend import choose_for_job
from app.services.write_buffer import ClaimLost, DatabaseUnreachable, is_unreachable
from app.training.checkpoints import last_checkpoint, load_first_stage_run
from app.training.common import TrainingOutcome
from app.training.data import VALIDATION_ROLE, EvalSpec, PreparedData, prepare, read_training_split
from app.training.distributed import train_embedder_on_devices
from app.training.embedder import train_embedder
from app.training.mining import mine_hard_negatives
from app.training.observer import TrainingCancelled
from app.training.params import EmbedderParams, MiningParams, RerankerParams
from app.training.reranker import train_reranker

__all__ = ["Heartbeat", "SqlObserver", "recover_lost_jobs", "run_job"]  # SqlObserver: its old home

log = logging.getLogger(__name__)


def _claim(job_id: str, stale_seconds: int) -> Job | None:
    """Atomically take the job: queued, or running under a worker whose heartbeat went stale.

    A second delivery of the same task (Redis redelivers unacknowledged tasks) finds a fresh
    heartbeat and leaves the job alone, so a job never runs twice at once.
    """
    now = utcnow()
    with session_scope() as s:
        taken = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.cancel_requested.is_(False),
                or_(
                    Job.status == "queued",
                    and_(
                        Job.status == "running",
                        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - timedelta(seconds=stale_seconds)),
                    ),
                ),
            )
            .values(
                status="running",
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
                error=None,
            )
        ).rowcount
        job = s.get(Job, job_id)
        if job is None:
            return None
        if not taken:
            if job.cancel_requested and job.status in {"queued", "running"}:
                job.status, job.finished_at = "cancelled", now
                events.add_status_event(s, job_id, "cancelled")
            return None
        events.add_status_event(s, job_id, "running" if job.attempts <= 1 else "resumed", f"attempt {job.attempts}")
        s.flush()
        s.expunge(job)
        return job


class Heartbeat:
    """Refreshes a row's ``heartbeat_at`` from a background thread, also during long evaluations.

    ``table`` is :class:`Job` or :class:`Index` (an index build is watched the same way).
    """

    def __init__(self, row_id: str, interval: float, table: type[Job] | type[Index] = Job) -> None:
        self.row_id = row_id
        self.interval = interval
        self.table = table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{row_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with session_scope() as s:
                    s.execute(update(self.table).where(self.table.id == self.row_id).values(heartbeat_at=utcnow()))
            except Exception:  # a database blip must not kill the training thread
                log.warning("heartbeat of %s %s failed", self.table.__tablename__, self.row_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def recover_lost_jobs(settings: Settings | None = None) -> list[str]:
    """Send again the tasks of jobs that would otherwise never finish; safe to run often and anywhere.

    - running, but the heartbeat is stale: its worker died (it resumes from its checkpoint);
    - queued, and its task was sent long ago: the message may be lost (a broker restarted
      without persistence). If it was not lost, the copy finds the job taken and does nothing;
    - cancel requested while its worker was dead: nobody will stop it at a step, so it ends
      ``cancelled`` here.
    Delivery is at least once; the atomic claim in ``_claim`` makes running exactly once.
    """
    from app.services import dispatch

    settings = settings or get_settings()
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.job_stale_seconds)
    sent_before = now - timedelta(seconds=settings.redispatch_seconds)
    dead = and_(Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before))
    _cancel_abandoned(dead)
    with session_scope() as s:
        lost = list(
            s.execute(
                select(Job.id, Job.kind).where(
                    Job.cancel_requested.is_(False),
                    or_(
                        dead,
                        and_(
                            Job.status == "queued",
                            or_(Job.dispatched_at.is_(None), Job.dispatched_at < sent_before),
                        ),
                    ),
                )
            )
        )
    for job_id, kind in lost:
        log.warning("job %s looks lost (dead worker or lost message): sending it again", job_id)
        dispatch.enqueue_job(job_id, kind)
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow()))
    return [job_id for job_id, _ in lost]


def _cancel_abandoned(dead: ColumnElement[bool]) -> None:
    """Cancel requested, but the worker that would honour it at the next step is dead."""
    now = utcnow()
    with session_scope() as s:
        ended = s.execute(
            update(Job)
            .where(Job.cancel_requested.is_(True), or_(dead, Job.status == "queued"))
            .values(status="cancelled", finished_at=now, message=_append_message("cancelled while its worker was down"))
            .execution_options(synchronize_session=False)
        ).rowcount
    if ended:
        log.warning("%d job(s) cancelled while their worker was down: ended as cancelled", ended)


def _append_message(text: str) -> ColumnElement[str]:
    return case((Job.message.is_(None), text), else_=Job.message + "\n" + text)


def run_job(job_id: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    waiting = memory_guard.hold_reason(job_id, settings)
    if waiting:  # left queued: the recovery sweep sends it again
        memory_guard.hold(job_id, waiting)
        return
    job = _claim(job_id, settings.job_stale_seconds)
    if job is None:
        log.info("job %s: nothing to do (finished, cancelled, or running elsewhere)", job_id)
        return
    with Heartbeat(job_id, interval=max(1.0, settings.job_stale_seconds / 4)):
        _run_claimed(job, settings)


def _run_claimed(job: Job, settings: Settings) -> None:
    """The work dir (checkpoints, here and in the store) goes only when the job succeeded: a failed or
    cancelled job keeps it for ``POST /jobs/{id}/retry``, and a job left running (database unreachable,
    taken over) resumes from it, on this machine or another."""
    observer = SqlObserver(job.id, job.attempts, max_buffered=settings.db_outage_buffer_writes,
                           full_wait_seconds=settings.db_outage_seconds)  # fmt: skip
    store = storage.store(settings)
    work_dir = store.work_dir(job.id)
    ended = "left running"
    try:
        ended = _train_and_publish(job, settings, observer, store, work_dir)
    except TrainingCancelled as exc:
        ended = _end_cancelled(job.id, observer, settings, exc)
    except Exception as exc:
        if (cancelled := _cancellation_in(exc)) is not None:
            ended = _end_cancelled(job.id, observer, settings, cancelled)
        elif is_unreachable(exc) or isinstance(exc, ClaimLost):
            log.warning("job %s: database unreachable or job taken over: left running, checkpoint kept", job.id)
        else:
            ended = _fail(job.id, observer, settings, exc)
    finally:
        if ended == "succeeded":
            store.remove_work(job.id)
        log.info("job %s: %s", job.id, ended)


def _fail(job_id: str, observer: SqlObserver, settings: Settings, exc: Exception) -> str:
    """A real error of the job (its data, its parameters, the engine): it ends ``failed``."""
    log.error("job %s failed", job_id, exc_info=exc)
    error = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, ValueError | DatasetFormatError | OSError):
        error += "\n" + "".join(traceback.format_exception(exc)[-3:])
    return "failed" if observer.finish("failed", settings.db_outage_seconds, error=error) else "left running"


def _train_and_publish(
    job: Job, settings: Settings, observer: SqlObserver, store: ArtifactStore, work_dir: Path
) -> str:
    with session_scope() as s:
        dataset = s.get(Dataset, job.dataset_id)
        if dataset is None:
            raise ValueError(f"dataset '{job.dataset_id}' no longer exists")
        dataset_key = dataset.path
        dataset_format, dataset_name = dataset.format, dataset.name
        base_path, base_row = resolve_base_model(s, settings, job.base_model)
        base_config = EmbedderConfig.from_dict(base_row.config if base_row else None)
        candidate_ref = job.params.get("candidate_model") or BUNDLED_MODEL_ID
        candidate_path, candidate_row = resolve_base_model(s, settings, candidate_ref)
        candidate_config = EmbedderConfig.from_dict(candidate_row.config if candidate_row else None)

    dataset_dir = storage.local_copy(settings, dataset_key)
    if job.kind == "mine_negatives":
        _mine_into_dataset(job, settings, observer, dataset_dir, dataset_format, dataset_name, base_path, base_config)
        return "succeeded"
    spec = EvalSpec(**job.eval)
    data = prepare(
        dataset_dir,
        dataset_format,
        spec,
        job.params.get("train_split", "train"),
        job.params.get("max_train_queries"),
    )
    if job.kind == "serving_backend":
        if base_row is None:
            raise ValueError(f"model '{job.base_model}' no longer exists")
        candidate = (candidate_path, candidate_config)
        return gate_existing_model(job, settings, observer, store, work_dir, data, base_row, candidate)
    device = resolve_device(settings.device)
    observer.on_message(_roles_message(job.attempts, data, device))
    _restore_checkpoint(store, job.id, work_dir, observer)

    def push(step: int) -> None:
        store.save_checkpoint(job.id, work_dir, step)

    outcome: TrainingOutcome
    if job.kind == "embedder":
        params = EmbedderParams(**job.params)
        train, device = _embedder_training(params, device, settings, index_vectors(
            settings, job.dataset_id, base_row and base_row.id, base_config))  # fmt: skip
        outcome = train(
            base_path, data, params, work_dir, observer, device,
            base_config if base_row is not None else None, on_checkpoint=push,
        )  # fmt: skip
    else:
        outcome = train_reranker(
            base_path, data, RerankerParams(**job.params), work_dir, observer, device,
            candidate_path, candidate_config, candidate_ref, on_checkpoint=push,
            known_vectors=index_vectors(settings, job.dataset_id, candidate_row and candidate_row.id, candidate_config),
        )  # fmt: skip
    if not outcome.model_dir.exists():
        raise RuntimeError("training finished without an evaluated model to keep")
    if observer.lost:
        return "left running"
    inherited = [trained_hashes(settings, base_row), trained_hashes(settings, candidate_row)]
    write_provenance(outcome.model_dir, job.dataset_id, data.train_queries, inherited)
    _choose_serving_backend(job, settings, outcome, data, observer, work_dir, (candidate_path, candidate_config))
    return _publish_model(job, settings, observer, store, outcome)


def _choose_serving_backend(
    job: Job, settings: Settings, outcome: TrainingOutcome, data: PreparedData, observer: SqlObserver,
    work_dir: Path, candidate: tuple[str, EmbedderConfig],
) -> None:  # fmt: skip
    """The end-of-job gate; a reranker's is run on the first-stage candidates its job saved."""
    if job.kind == "reranker":
        recall_k = RerankerParams(**job.params).recall_k
        saved_run = (load_first_stage_run(work_dir) or {}).get(VALIDATION_ROLE)
    else:
        recall_k, saved_run = 100, None
    choose_for_job(settings, job.kind, outcome.model_dir, outcome.config, data, observer, candidate,
                   recall_k, saved_run)  # fmt: skip


def _embedder_training(
    params: EmbedderParams, device: str, settings: Settings, known_vectors: Callable[[], KnownVectors | None]
) -> tuple[Callable[..., Any], str]:
    """One device: the in-process trainer (on the one named, if named), which reads the base model's index
    vectors for its step 0 when there are some; several: the DDP launcher, one process per device, each with
    this worker's torch thread count (its rank 0 encodes the corpus itself)."""
    if params.device_count > 1:
        return partial(train_embedder_on_devices, threads=settings.torch_threads), device
    one_device = params.devices[0] if isinstance(params.devices, list) else device
    return partial(train_embedder, known_vectors=known_vectors), one_device


def _publish_model(
    job: Job, settings: Settings, observer: SqlObserver, store: ArtifactStore, outcome: TrainingOutcome
) -> str:
    """The files first (atomically, in the store), then the model row and the job's success in one
    transaction, after the run's metrics; when the database does not come back in time, the files go back
    into the work dir so the resumed attempt publishes them."""
    if not outcome.better_than_base:
        observer.on_message("the verdict is not 'better': do not promote this model")
    model_id = new_id()
    key = storage.model_rel(model_id)
    store.publish_dir(outcome.model_dir, key)
    observer.add_model(
        {
            "id": model_id,
            "name": f"{job.kind}-{job.id[:8]}",
            "kind": job.kind,
            "source": "job",
            "path": key,
            "base_model": job.base_model,
            "job_id": job.id,
            "config": outcome.config,
            "better_than_base": outcome.better_than_base,
            "verdict": outcome.verdict.to_dict() if outcome.verdict else None,
        }
    )
    try:
        if observer.finish("succeeded", settings.db_outage_seconds, model_id=model_id):
            return "succeeded"
    except BaseException:
        store.remove(key)  # no row names these files
        raise
    shutil.copytree(store.local_copy(key), outcome.model_dir, dirs_exist_ok=True)
    store.remove(key)
    return "left running"


def _restore_checkpoint(store: ArtifactStore, job_id: str, work_dir: Path, observer: SqlObserver) -> None:
    """A job taken over on a machine without its work dir: fetch its latest checkpoint from the store."""
    if last_checkpoint(work_dir) is None and (step := store.restore_checkpoint(job_id, work_dir)) is not None:
        observer.on_message(f"fetched the checkpoint at step {step} from the artifact store")


def _cancellation_in(exc: BaseException) -> TrainingCancelled | None:
    """The TrainingCancelled behind ``exc``, when a library re-raised the engine's stop as its own error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TrainingCancelled):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _end_cancelled(job_id: str, observer: SqlObserver, settings: Settings, exc: TrainingCancelled) -> str:
    """Wherever the engine stopped (a step, an evaluation, between phases), the job ends ``cancelled``;
    unless it stopped because the job is no longer this attempt's (then another writes its end)."""
    if observer.lost:
        return "left running"
    log.info("job %s: %s", job_id, exc)
    observer.on_message(str(exc))
    return "cancelled" if observer.finish("cancelled", settings.db_outage_seconds) else "left running"


def _roles_message(attempt: int, data: PreparedData, device: str) -> str:
    contaminated = " (CONTAMINATED: the base or candidate model trained on some of them)" if data.contaminated else ""
    return (
        f"attempt {attempt}: training on {len(data.train_queries)} queries; choosing on {len(data.validation_queries)} "
        f"validation queries ({data.validation_label}); reporting on {len(data.eval_queries)} test queries "
        f"({data.eval_label}){contaminated}, against {len(data.corpus)} documents, device {device}"
    )


def _mine_into_dataset(
    job: Job,
    settings: Settings,
    observer: SqlObserver,
    dataset_dir: Path,
    dataset_format: str,
    dataset_name: str,
    base_path: str,
    base_config: EmbedderConfig,
) -> None:
    """A ``mine_negatives`` job: a new training_jsonl dataset, registered in the same transaction that
    marks the job succeeded, so a job that failed or died never leaves a visible half-result.

    No checkpoint: a resumed job mines again from the start (it is one encoding of the corpus).
    """
    params = MiningParams(**job.params)
    data = read_training_split(dataset_dir, dataset_format, params.train_split)
    device = resolve_device(settings.device)
    observer.on_message(
        f"attempt {job.attempts}: mining negatives for {len(data.train_queries)} queries "
        f"among {len(data.corpus)} documents with {job.base_model}, device {device}"
    )
    model = load_embedder(base_path, device, params.passage_max_len or base_config.max_seq_length)
    outcome = mine_hard_negatives(data, model, base_config, params, observer)
    del model
    if not observer.buffer.drain(settings.db_outage_seconds):
        raise DatabaseUnreachable("the mining job's messages could not be written")
    if observer.lost:
        raise ClaimLost(job.id)
    source = f"job {job.id}: dataset {job.dataset_id}, negatives mined with {job.base_model}"
    source_ids = {text: qid for qid, text in data.train_queries.items()}
    dataset_id, stats = store_training_examples(settings, outcome.examples, source, source_ids)
    try:
        with session_scope() as s:
            s.add(
                Dataset(
                    id=dataset_id,
                    name=f"{dataset_name} + mined negatives ({job.base_model})"[:200],
                    format="training_jsonl",
                    path=storage.dataset_rel(dataset_id),
                    stats=stats,
                )
            )
            row = s.get(Job, job.id)
            if row is not None:
                row.status, row.finished_at, row.output_dataset_id = "succeeded", utcnow(), dataset_id
                note = f"new training dataset {dataset_id}"
                row.message = f"{row.message}\n{note}" if row.message else note
                events.add_event(s, job.id, "message", note)
                events.add_status_event(s, job.id, "succeeded")
    except BaseException:
        storage.store(settings).remove(storage.dataset_rel(dataset_id))
        raise
