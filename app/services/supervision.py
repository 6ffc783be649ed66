"""Who is alive: workers announce themselves in SQL, jobs show a stale heartbeat as ``stalled``.

Celery's own liveness check (``inspect ping``) needs a broadcast exchange, which the embedded SQL
broker does not have; a row per worker, refreshed by a thread in its main process, works on every
backend. A SIGKILLed worker stops refreshing its row, so it drops out of /health within
``RETUNE_JOB_STALE_SECONDS``; a worker that stops cleanly deletes its row at once.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.session import session_scope
from app.db.tables import WorkerSeen, utcnow

log = logging.getLogger(__name__)


def is_stalled(status: str, heartbeat_at: datetime | None, stale_seconds: int, now: datetime | None = None) -> bool:
    """A running job whose worker stopped refreshing its heartbeat (it died, or hangs)."""
    if status != "running":
        return False
    return heartbeat_at is None or heartbeat_at < (now or utcnow()) - timedelta(seconds=stale_seconds)


def live_workers(session: Session, stale_seconds: int) -> list[WorkerSeen]:
    since = utcnow() - timedelta(seconds=stale_seconds)
    return list(session.scalars(select(WorkerSeen).where(WorkerSeen.seen_at >= since).order_by(WorkerSeen.name)))


class WorkerPresence:
    """Keeps this worker's row fresh from a daemon thread; dies with the process, as it should."""

    def __init__(self, name: str, queues: list[str], interval: float) -> None:
        self.name, self.queues, self.interval = name, queues, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-presence", daemon=True)

    def _touch(self) -> None:
        with session_scope() as s:
            row = s.get(WorkerSeen, self.name)
            if row is None:
                s.add(WorkerSeen(name=self.name, queues=",".join(self.queues), pid=os.getpid()))
            else:
                row.seen_at, row.pid = utcnow(), os.getpid()

    def _run(self) -> None:
        while True:
            try:
                self._touch()
            except Exception:  # a database blip must not end the worker's announcements for good
                log.warning("worker presence of %s not recorded", self.name, exc_info=True)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with session_scope() as s:
                s.execute(delete(WorkerSeen).where(WorkerSeen.name == self.name))
        except Exception:  # the row then simply goes stale
            log.warning("could not remove worker %s", self.name, exc_info=True)
