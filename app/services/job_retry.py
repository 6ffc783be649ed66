"""``POST /jobs/{id}/retry``: a failed or cancelled job runs again, from its last checkpoint when one was kept.

Both ends keep the job's work dir (checkpoints and resume state) until it is deleted or succeeds, so the
new attempt resumes where the last one stopped: a failure after hours of training costs only the steps
since the last checkpoint. A cancelled job can be retried too: a cancel is how a user frees a worker
for something more urgent, and taking the job up again later should not cost its finished steps.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.errors import ConflictError, ServiceUnavailableError
from app.db.tables import Job, utcnow
from app.services import dispatch, events
from app.services.jobs import get_job

RETRYABLE = ("failed", "cancelled")


def retry_job(session: Session, job_id: str) -> Job:
    """Re-queue the job (409 unless it is failed or cancelled); the worker that claims it resumes from the
    checkpoint. When the broker is unreachable the job is put back as it was (503)."""
    job = get_job(session, job_id)
    before = {"status": job.status, "finished_at": job.finished_at, "error": job.error,
              "cancel_requested": job.cancel_requested}  # fmt: skip
    taken = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(RETRYABLE))
        .values(status="queued", finished_at=None, error=None, cancel_requested=False, dispatched_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not taken:
        session.rollback()
        raise ConflictError(f"job '{job_id}' is {job.status}; only a failed or cancelled job can be retried")
    events.add_status_event(session, job_id, "queued", "retried: it resumes from its last checkpoint if one was kept")
    session.commit()
    try:
        dispatch.enqueue_job(job_id, job.kind)
    except ServiceUnavailableError:
        session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(**before))
        events.add_status_event(session, job_id, before["status"], "the retry could not be queued")
        session.commit()
        raise
    session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow()))
    session.commit()
    session.refresh(job)
    return job
