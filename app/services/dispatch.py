"""Send work to the Celery workers by task name (the API never imports the worker's code)."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from app.core.config import get_settings
from app.core.errors import ServiceUnavailableError
from app.core.queue import make_celery


@lru_cache
def _client() -> Celery:
    return make_celery(get_settings())


def enqueue(task_name: str, *args: str) -> None:
    try:
        _client().send_task(task_name, args=list(args), queue=get_settings().queue, retry=True,
                            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})  # fmt: skip
    except BrokerError as exc:
        raise ServiceUnavailableError(f"the task queue is unreachable: {exc}") from exc
