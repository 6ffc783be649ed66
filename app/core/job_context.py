"""The job a worker process is running, carried on every log line it writes while running it.

A ``contextvars.ContextVar`` plus a log-record factory rather than a filter on some handlers: Celery,
transformers and our own modules log through different loggers and handlers, and a record factory
reaches all of them (``record.job_id``, and a ``[job ID]`` prefix on the message).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_job_id: ContextVar[str | None] = ContextVar("retune_job_id", default=None)
_installed = False


def current_job_id() -> str | None:
    return _job_id.get()


def _install_record_factory() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        job_id = _job_id.get()
        record.job_id = job_id or "-"
        if job_id and isinstance(record.msg, str) and not record.msg.startswith("[job "):
            record.msg = f"[job {job_id}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


@contextmanager
def job_logging(job_id: str) -> Iterator[None]:
    """Within the block, every log record of this thread names ``job_id``; reset afterwards."""
    _install_record_factory()
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)
