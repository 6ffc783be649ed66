"""Thin task wrappers: the work itself lives in app.services (runner) and app.training (engine)."""

from __future__ import annotations

import signal

from celery.signals import task_postrun, worker_process_init, worker_ready, worker_shutdown

from app.core.queue import BUILD_INDEX, RECOVER, RUN_JOB
from worker.celery_app import celery_app

_presence: list[object] = []  # this worker's WorkerPresence, once ready (its main process only)


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
    _sweep()


def _sweep() -> None:
    from app.services.indexes import recover_lost_builds
    from app.services.job_runner import recover_lost_jobs as recover

    recover()
    recover_lost_builds()


@worker_ready.connect
def recover_at_start(sender: object = None, **_: object) -> None:
    """Announce this worker (for /health); jobs and builds left by a dead worker resume at once."""
    import os
    import socket

    from app.core.config import get_settings
    from app.services.supervision import WorkerPresence

    settings = get_settings()
    # Node name and pid: a restarted worker (same host, same node name) is a new row, the dead one goes stale.
    name = f"{getattr(sender, 'hostname', None) or socket.gethostname()}:{os.getpid()}"
    presence = WorkerPresence(name, settings.consumed_queues(), interval=max(1.0, settings.job_stale_seconds / 4))
    presence.start()
    _presence.append(presence)
    _sweep()


@worker_shutdown.connect
def withdraw_presence(**_: object) -> None:
    for presence in _presence:
        presence.stop()  # type: ignore[attr-defined]


@worker_process_init.connect
def prepare_worker_process(**_: object) -> None:
    """Each forked worker process: its own database connections and torch thread count, and death with
    its parent: a SIGKILLed worker must not leave a pool process training on (its job is resumed)."""
    from app.core.config import get_settings
    from app.db.session import discard_inherited_connections
    from app.retrieval.device import configure_threads

    _die_with_parent()
    discard_inherited_connections()
    configure_threads(get_settings().torch_threads)


def _die_with_parent() -> None:
    """Linux only (PR_SET_PDEATHSIG); elsewhere a pool process may outlive a killed worker."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


@task_postrun.connect
def give_memory_back(**_: object) -> None:
    from app.retrieval.device import release_freed_memory

    release_freed_memory()
