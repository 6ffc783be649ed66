"""Send work to the Celery workers by task name (the API never imports the worker's code)."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from app.core.config import get_settings
from app.core.errors import ServiceUnavailableError
from app.core.queue import RUN_JOB, make_celery, queue_for_job


@lru_cache
def _client() -> Celery:
    return make_celery(get_settings())


def enqueue(task_name: str, *args: str, queue: str | None = None) -> None:
    """Send ``task_name``; without ``queue`` Celery's ``task_routes`` choose it (gpu by default)."""
    options = {"queue": queue} if queue else {}
    try:
        _client().send_task(task_name, args=list(args), retry=True, **options,
                            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})  # fmt: skip
    except BrokerError as exc:
        raise ServiceUnavailableError(f"the task queue is unreachable: {exc}") from exc


def enqueue_job(job_id: str, kind: str) -> None:
    """A job's task, on the queue its kind needs (training: gpu; mining: cpu)."""
    enqueue(RUN_JOB, job_id, queue=queue_for_job(get_settings(), kind))


def broker_reachable(timeout: float = 2.0) -> bool:
    """One short connection attempt, for /health: a broker that is down must not hang the probe."""
    try:
        with _client().connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # any failure to connect means "unreachable" to a health probe
        return False
