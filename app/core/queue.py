"""The Celery application, configured from Settings. The API only sends tasks by name through it;
``worker/`` registers the task bodies. Late acknowledgement: a task whose worker dies is delivered
again instead of being lost.
"""

from __future__ import annotations

from celery import Celery

from app.core.config import Settings

RUN_JOB = "retune.run_job"
BUILD_INDEX = "retune.build_index"
RECOVER = "retune.recover_lost_jobs"


def make_celery(settings: Settings) -> Celery:
    app = Celery("retune", broker=settings.resolved_broker_url)
    app.conf.update(
        task_default_queue=settings.queue,
        task_ignore_result=True,  # job state lives in Retune's own SQL tables
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Celery beat (started with the worker: `-B`) sends the recovery sweep; no scheduler of our own.
        beat_schedule={
            "recover-lost-jobs": {
                "task": RECOVER,
                "schedule": settings.recovery_interval_seconds,
                "options": {"queue": settings.queue, "expires": settings.recovery_interval_seconds},
            }
        },
    )
    return app
