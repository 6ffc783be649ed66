"""A running job's writes, kept in order in the worker while the database is unreachable.

A training run must not stop because PostgreSQL restarts or a network path flaps for a few seconds:
the model, optimizer and checkpoints live in the worker, only the record of the run lives in SQL.
So the worker queues each write (a metric point, an event, the progress, the final status) and sends
the whole queue, oldest first, in one transaction; when that fails for want of a connection the queue
is kept and sent again at most once every ``retry_seconds``, and training goes on.

Every write is idempotent (a metric point is an upsert on its unique (job_id, step, name, split); an
event carries a key made here), because a commit cut by the network may have been applied anyway:
sending the queue again then writes nothing twice. A ``guard`` runs first in each transaction: when
the job is no longer this attempt's (the recovery sweep gave it to another worker, or ended it while
this worker was cut off), the queue is dropped and ``lost`` is set, so the old attempt stops writing.

The queue is bounded (``max_pending`` writes, RETUNE_DB_OUTAGE_BUFFER_WRITES), losing nothing: a write
that only sets a current value (the progress) replaces its unsent predecessor, so a long outage queues
metric points and events, not one progress update per step; a write past the bound makes the caller
(the training loop) wait for the database, up to ``full_wait_seconds`` (RETUNE_DB_OUTAGE_SECONDS), with
everything kept. Still unreachable after that, it raises :class:`DatabaseUnreachable`: the attempt ends
as at a job's end past the same wait, the job stays ``running`` with its checkpoint for the recovery sweep.

No library offers this for SQLAlchemy sessions (an outbox table would need the database that is
down), hence the small class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from app.db.session import session_scope
from app.db.tables import JobEvent, MetricPoint, new_id, utcnow

log = logging.getLogger(__name__)

Write = Callable[[Session], None]


class DatabaseUnreachable(RuntimeError):
    """Buffered writes still unsent after waiting: the job is left to the recovery sweep."""


def is_unreachable(exc: BaseException) -> bool:
    """The database could not be reached (refused, cut, timed out): worth waiting for, not a job error."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError | DatabaseUnreachable):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class ClaimLost(RuntimeError):
    """The job is no longer this attempt's: another worker took it over, or it was ended meanwhile."""


class WriteBuffer:
    def __init__(
        self,
        guard: Callable[[Session], bool],
        retry_seconds: float = 1.0,
        max_pending: int = 100_000,
        full_wait_seconds: float = 600.0,
    ) -> None:
        self.guard = guard
        self.retry_seconds = retry_seconds
        self.max_pending = max_pending
        self.full_wait_seconds = full_wait_seconds
        self.lost = False
        self._pending: list[Write] = []
        self._latest: dict[str, Write] = {}  # unsent writes that a newer one of the same key makes useless
        self._retry_at = 0.0
        self._unreachable_since: float | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, write: Write, send: bool = True, replaces: str | None = None) -> None:
        """Queue one write and send the queue now (unless the database was just found unreachable);
        ``send=False`` only queues it, to commit it with the next write (and never waits on the bound).
        ``replaces``: the write sets a current value named so; an unsent one of that name is dropped."""
        if self.lost:
            return
        if replaces is not None:
            if (older := self._latest.pop(replaces, None)) is not None:
                self._pending.remove(older)
            self._latest[replaces] = write
        self._pending.append(write)
        if send and len(self._pending) > self.max_pending:
            self._wait_for_room()
        elif send:
            self.flush()

    def _wait_for_room(self) -> None:
        """The buffer is full: the caller waits for the database rather than anything being dropped."""
        log.warning("%d writes buffered, past the bound: training waits for the database (up to %.0f s)",
                    len(self._pending), self.full_wait_seconds)  # fmt: skip
        if not self.drain(self.full_wait_seconds):
            raise DatabaseUnreachable(
                f"the database stayed unreachable for {self.full_wait_seconds:.0f} s with {len(self._pending)} "
                "writes buffered: the job is left to the recovery sweep, which resumes it from its checkpoint"
            )

    def _clear(self) -> None:
        self._pending, self._latest = [], {}

    def flush(self, force: bool = False) -> bool:
        """True when nothing is left to send."""
        if not self._pending or self.lost:
            return not self._pending
        now = time.monotonic()
        if not force and now < self._retry_at:
            return False
        try:
            with session_scope() as s:
                if not self.guard(s):
                    raise ClaimLost
                for write in self._pending:
                    write(s)
        except ClaimLost:
            log.warning("the job is no longer this attempt's: %d buffered write(s) dropped", len(self._pending))
            self.lost = True
            self._clear()
            return True
        except Exception as exc:
            if not is_unreachable(exc):  # a real error (a constraint, a bug): sending it again would fail again
                log.error("a write of the job failed: %d buffered write(s) dropped", len(self._pending))
                self._clear()
                raise
            if self._unreachable_since is None:
                self._unreachable_since = now
                log.warning("database unreachable: buffering the job's writes (%s)", str(exc).splitlines()[0])
            self._retry_at = now + self.retry_seconds
            return False
        if self._unreachable_since is not None:
            log.warning("database back after %.1f s: %d buffered write(s) sent", now - self._unreachable_since,
                        len(self._pending))  # fmt: skip
            self._unreachable_since = None
        self._clear()
        return True

    def drain(self, timeout: float) -> bool:
        """Send everything, waiting up to ``timeout`` seconds for the database; True once all is written."""
        deadline = time.monotonic() + timeout
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_seconds, max(0.0, deadline - time.monotonic())))
        return True


def _insert_for(session: Session, table: type[Any]) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite both do)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    return insert(table)


def upsert_metric(
    session: Session, job_id: str, step: int, epoch: float, name: str, value: float, split: str, created_at: datetime
) -> None:
    """One metric point; written again (a resent flush, a rerun of the same step) it keeps one row."""
    stmt = _insert_for(session, MetricPoint).values(
        job_id=job_id, step=step, epoch=epoch, name=name, value=value, split=split, created_at=created_at
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["job_id", "step", "name", "split"], set_={"value": value, "epoch": epoch}
        )
    )


def event_key() -> str:
    return new_id()


def add_event_once(
    session: Session,
    key: str,
    job_id: str,
    type_: str,
    message: str,
    data: dict[str, Any] | None = None,
    level: str = "info",
    created_at: datetime | None = None,
) -> bool:
    """Insert the event unless one with ``key`` exists; True when it was inserted now.

    ``created_at``: when the worker made it, not when a delayed flush sent it."""
    stmt = _insert_for(session, JobEvent).values(
        key=key, job_id=job_id, type=type_, message=message, data=data, level=level, created_at=created_at or utcnow()
    )
    inserted = session.execute(stmt.on_conflict_do_nothing(index_elements=["key"]).returning(JobEvent.id))
    return inserted.first() is not None
