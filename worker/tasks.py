"""Thin task wrappers: the work itself lives in app.services (runner) and app.training (engine)."""

from celery.signals import task_postrun, worker_process_init, worker_ready

from app.core.queue import BUILD_INDEX, RECOVER, RUN_JOB
from worker.celery_app import celery_app


@celery_app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    """A failed job ends as a failed task (logged so by Celery); acked all the same, so never retried."""
    from app.core.job_context import job_logging
    from app.services.job_runner import run_job as run
    from app.services.jobs import raise_if_failed

    with job_logging(job_id):
        run(job_id)
        raise_if_failed(job_id)


@celery_app.task(name=BUILD_INDEX)
def build_index(index_id: str) -> None:
    from app.services.indexes import build_index as build

    build(index_id)


@celery_app.task(name=RECOVER, ignore_result=True)
def recover_lost_jobs() -> None:
    from app.services.job_runner import recover_lost_jobs as recover

    recover()


@worker_ready.connect
def recover_at_start(**_: object) -> None:
    """Jobs left 'running' by a worker that died resume at once, not at the next sweep."""
    from app.services.job_runner import recover_lost_jobs as recover

    recover()


@worker_process_init.connect
def prepare_worker_process(**_: object) -> None:
    """Each forked worker process: its own database connections and torch thread count."""
    from app.core.config import get_settings
    from app.db.session import discard_inherited_connections
    from app.retrieval.device import configure_threads

    discard_inherited_connections()
    configure_threads(get_settings().torch_threads)


@task_postrun.connect
def give_memory_back(**_: object) -> None:
    from app.retrieval.device import release_freed_memory

    release_freed_memory()
