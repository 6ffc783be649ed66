"""Thin task wrappers: the work itself lives in app.services (runner) and app.training (engine)."""

from celery.signals import worker_ready

from app.core.queue import BUILD_INDEX, RUN_JOB
from worker.celery_app import celery_app


@celery_app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    from app.services.job_runner import run_job as run

    run(job_id)


@celery_app.task(name=BUILD_INDEX)
def build_index(index_id: str) -> None:
    from app.services.indexes import build_index as build

    build(index_id)


@worker_ready.connect
def recover_orphaned_jobs(**_: object) -> None:
    """Jobs left 'running' by a worker that died are sent again; they resume from their checkpoint."""
    from app.services.job_runner import requeue_orphaned_jobs

    requeue_orphaned_jobs()
