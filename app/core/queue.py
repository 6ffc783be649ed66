"""The Celery application, configured from Settings. The API only sends tasks by name through it;
``worker/`` registers the task bodies. Late acknowledgement: a task whose worker dies is delivered
again instead of being lost.

Two queues: training jobs go to the *gpu* queue, index builds, mining and the recovery sweep to the
*cpu* queue, so machines without an accelerator can take the cheap work (Celery's own ``task_routes``;
a job's kind picks its queue in :func:`queue_for_job`). The embedded worker consumes both.
"""

from __future__ import annotations

from celery import Celery

from app.core.config import Settings

RUN_JOB = "retune.run_job"
BUILD_INDEX = "retune.build_index"
RECOVER = "retune.recover_lost_jobs"
# Inference on a corpus, no training: mining encodes it once; a backend gate runs CPU runtimes.
CPU_JOB_KINDS = frozenset({"mine_negatives", "serving_backend"})


def queue_for_job(settings: Settings, kind: str) -> str:
    """The queue a job of ``kind`` is sent to: training on the gpu queue, mining and gating on the cpu queue."""
    return settings.resolved_cpu_queue if kind in CPU_JOB_KINDS else settings.resolved_gpu_queue


def make_celery(settings: Settings) -> Celery:
    app = Celery("retune", broker=settings.resolved_broker_url)
    app.conf.update(
        task_default_queue=settings.resolved_gpu_queue,
        task_routes={
            BUILD_INDEX: {"queue": settings.resolved_cpu_queue},
            RECOVER: {"queue": settings.resolved_cpu_queue},
        },
        task_ignore_result=True,  # job state lives in Retune's own SQL tables
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts_level="INFO",  # printed training logs (loss lines) are not warnings
        # ONE Celery beat (`python -m app.cli beat`; `serve` runs one) sends the sweep; no scheduler of our own.
        beat_schedule={
            "recover-lost-jobs": {
                "task": RECOVER,
                "schedule": settings.recovery_interval_seconds,
                "options": {"queue": settings.resolved_cpu_queue, "expires": settings.recovery_interval_seconds},
            }
        },
    )
    return app


def prepare_sql_broker(settings: Settings) -> None:
    """Embedded broker only: create kombu's tables and the queue's row from one process, before any
    worker or API process starts. kombu's SQL transport creates both on first use, guarded by a lock
    of its own process alone, so a worker and the API starting together on a fresh data dir race:
    one fails with "table already exists" or a UNIQUE violation on the queue's name (seen in CI as a
    500 from the first POST /jobs). A no-op for other brokers (Redis needs no declaring)."""
    if not settings.resolved_broker_url.startswith("sqla+"):
        return
    from kombu import Queue

    with make_celery(settings).connection_for_write() as connection:
        for name in (settings.resolved_gpu_queue, settings.resolved_cpu_queue):
            Queue(name).bind(connection.default_channel).declare()
