"""The training engine's observer inside a worker: every write goes through a :class:`WriteBuffer`.

While the database is reachable each write commits at once (a client polling ``GET /jobs/{id}/metrics``
sees points as they happen); while it is not, they wait in order in the buffer and training goes on.
The final status is written through the same buffer, after everything the run recorded before it.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.db.session import session_scope
from app.db.tables import Job, MetricPoint, Model, utcnow
from app.services import events
from app.services.write_buffer import WriteBuffer, add_event_once, event_key, is_unreachable, upsert_metric

FINAL_STATUSES = {"succeeded", "failed", "cancelled"}


class SqlObserver:
    """Stores metrics and progress; polls the cancel flag at most once a second.

    ``attempt``: the job's ``attempts`` when this worker claimed it; writes stop once it changes.
    """

    def __init__(
        self,
        job_id: str,
        attempt: int | None = None,
        poll_seconds: float = 1.0,
        max_buffered: int = 100_000,
        full_wait_seconds: float = 600.0,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.poll_seconds = poll_seconds
        self.buffer = WriteBuffer(self._owns, poll_seconds, max_buffered, full_wait_seconds)
        self._last_poll = 0.0
        self._stop = False
        # Metrics of one (step, split) become one "metrics" event, written when the next group starts.
        self._pending: tuple[int, str] | None = None
        self._pending_values: dict[str, float] = {}

    def _owns(self, session: Session) -> bool:
        job = session.get(Job, self.job_id)
        if job is None or job.status in FINAL_STATUSES:
            return False
        return self.attempt is None or job.attempts == self.attempt

    @property
    def lost(self) -> bool:
        """The job was taken over or ended elsewhere: this attempt must stop without writing its end."""
        return self.buffer.lost

    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        if self._pending != (step, split):
            self._flush_metrics()
            self._pending = (step, split)
        self._pending_values[name] = value
        self.buffer.add(partial(upsert_metric, job_id=self.job_id, step=step, epoch=epoch, name=name, value=value,
                                split=split, created_at=utcnow()))  # fmt: skip

    def _flush_metrics(self) -> None:
        """The pending (step, split) group as one event: data {step, split, name: value, ...}."""
        if self._pending is None:
            return
        step, split = self._pending
        data = {"step": step, "split": split, **self._pending_values}
        message = events.metrics_message(step, split, self._pending_values)
        self._add_event("metrics", message, data)
        self._pending, self._pending_values = None, {}

    def _add_event(self, type_: str, message: str, data: dict[str, Any] | None = None, level: str = "info") -> None:
        self.buffer.add(partial(add_event_once, key=event_key(), job_id=self.job_id, type_=type_, message=message,
                                data=data, level=level, created_at=utcnow()))  # fmt: skip

    def on_progress(self, step: int, total_steps: int) -> None:
        self._flush_metrics()
        self.buffer.add(partial(_set_progress, self.job_id, step, total_steps), replaces="progress")

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            try:
                with session_scope() as s:
                    job = s.get(Job, self.job_id)
                    self._stop = job is None or job.cancel_requested
            except Exception as exc:  # unreachable: keep training on the last answer
                if not is_unreachable(exc):
                    raise
            self.buffer.flush()  # between writes too, so a quiet phase (an evaluation) sends what waits
        return self._stop or self.lost

    def on_resume(self, step: int) -> None:
        self._flush_metrics()
        self.buffer.add(partial(_resume_at, self.job_id, step))

    def on_message(self, text: str) -> None:
        self._flush_metrics()
        self.buffer.add(partial(_append_message, self.job_id, event_key(), text, utcnow()))

    def add_model(self, fields: dict[str, Any]) -> None:
        """The job's model row, committed with the next write (its ``finish``), so a model row never
        exists without the job's success; written once even when the flush that carries it is sent again."""
        self.buffer.add(partial(_add_model, fields), send=False)

    def repoint_model(self, model_id: str, old_key: str, new_key: str) -> None:
        """Serve an existing model from a new artifact key, committed with the job's ``finish``; a no-op when
        the row no longer reads ``old_key`` (the model was deleted or already moved)."""
        self.buffer.add(partial(_repoint_model, model_id, old_key, new_key), send=False)

    def finish(self, status: str, wait_seconds: float, **fields: object) -> bool:
        """Write the job's end after everything before it; False when the database stayed unreachable for
        ``wait_seconds`` or the job is no longer this attempt's (then the job is left to the recovery sweep)."""
        self._flush_metrics()
        error = fields.get("error")
        detail = str(error).splitlines()[0] if error else None
        self.buffer.add(partial(_finish, self.job_id, status, event_key(), detail, utcnow(), fields), send=False)
        return self.buffer.drain(wait_seconds) and not self.lost


def _set_progress(job_id: str, step: int, total_steps: int, session: Session) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(step=step, total_steps=total_steps))


def _resume_at(job_id: str, step: int, session: Session) -> None:
    """Training continues from the checkpoint at ``step``: what an attempt recorded after it goes."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))
    session.execute(update(Job).where(Job.id == job_id).values(step=step, resumed_from_step=step))


def _append_message(job_id: str, key: str, text: str, at: datetime, session: Session) -> None:
    """The event is the gate: the message is appended only by the flush that inserted it."""
    if add_event_once(session, key, job_id, "message", text, created_at=at):
        job = session.get(Job, job_id)
        if job is not None:
            job.message = f"{job.message}\n{text}" if job.message else text


def _add_model(fields: dict[str, Any], session: Session) -> None:
    if session.get(Model, fields["id"]) is None:
        session.add(Model(**fields))
        session.flush()


def _repoint_model(model_id: str, old_key: str, new_key: str, session: Session) -> None:
    session.execute(update(Model).where(Model.id == model_id, Model.path == old_key).values(path=new_key))


def _finish(
    job_id: str, status: str, key: str, detail: str | None, at: datetime, fields: dict[str, Any], session: Session
) -> None:
    job = session.get(Job, job_id)
    if job is None:
        return
    job.status, job.finished_at = status, at
    for name, value in fields.items():
        setattr(job, name, value)
    message = f"job {status}" + (f": {detail}" if detail else "")
    level = events.STATUS_LEVELS.get(status, "info")
    add_event_once(session, key, job_id, "status", message, {"status": status}, level, created_at=at)
