"""Job events: an append-only log per job (status changes, messages, metrics), read by cursor.

The shape follows OpenAI's fine-tuning events (``id, created_at, level, type, message, data``), the one
dashboards and CLIs already know. Readers page with ``after`` (the last id they saw), so a poller or an
SSE stream resumed with ``Last-Event-ID`` gets each event exactly once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import JobEvent

STATUS_LEVELS = {"failed": "error", "cancelled": "warn"}


def add_event(
    session: Session, job_id: str, type_: str, message: str, data: dict[str, Any] | None = None, level: str = "info"
) -> JobEvent:
    """Append one event inside the caller's transaction (so it commits with the change it describes)."""
    event = JobEvent(job_id=job_id, type=type_, message=message, data=data, level=level)
    session.add(event)
    return event


def add_status_event(session: Session, job_id: str, status: str, detail: str | None = None) -> JobEvent:
    message = f"job {status}" + (f": {detail}" if detail else "")
    return add_event(session, job_id, "status", message, {"status": status}, STATUS_LEVELS.get(status, "info"))


def list_events(session: Session, job_id: str, after: int | None, limit: int) -> list[JobEvent]:
    """Events with an id above ``after``, oldest first, at most ``limit``."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    return list(session.scalars(stmt.order_by(JobEvent.id).limit(limit)))


def metrics_message(step: int, split: str, values: dict[str, float]) -> str:
    shown = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
    return f"step {step} ({split}): {shown}"
