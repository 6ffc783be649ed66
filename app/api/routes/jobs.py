import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from sqlalchemy.orm import Session

from app.api.deps import DbSession, ReadAccess, SettingsDep, WriteAccess
from app.api.pagination import PageQuery, paginate
from app.api.schemas import (
    CheckpointOut,
    CheckpointsOut,
    JobEventOut,
    JobEventsOut,
    JobIn,
    JobOut,
    MetricPointOut,
    MetricsOut,
)
from app.db.session import session_scope
from app.db.tables import Job, Model
from app.services import checkpoints, events, job_retry, jobs, listing

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
JobKind = Literal["embedder", "reranker", "mine_negatives", "serving_backend"]
SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0


def _out(db: Session, job: Job) -> JobOut:
    out = JobOut.model_validate(job)
    if job.status == "running" and job.cancel_requested:
        out.status = "cancelling"  # computed: the worker ends it 'cancelled' at its next check
    if job.model_id and (model := db.get(Model, job.model_id)) is not None:
        out.better_than_base, out.verdict = model.better_than_base, model.verdict
    out.estimated_finish = jobs.estimated_finish(job)
    return out


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, dependencies=[WriteAccess])
def create_job(body: JobIn, db: DbSession, settings: SettingsDep) -> JobOut:
    # Only what the client sent: a mine_negatives job refuses any eval field, even the default seed.
    spec = body.eval.model_dump(exclude_none=True, exclude_unset=True)
    allow_overlap = bool(spec.pop("allow_overlap", False))
    params = body.params.model_dump(mode="json", exclude_unset=True)
    job = jobs.create_job(db, settings, body.kind, body.dataset_id, body.base_model, spec, params, allow_overlap)
    return _out(db, job)


@router.get("", response_model=list[JobOut], dependencies=[ReadAccess])
def list_jobs(
    db: DbSession,
    request: Request,
    response: Response,
    page: PageQuery,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    dataset_id: Annotated[str | None, Query(max_length=64)] = None,
) -> list[JobOut]:
    """Newest first. Pagination: `X-Has-More` and `Link: <...>; rel="next"` headers."""
    found = listing.page_jobs(db, page.after, page.limit, status, kind, dataset_id)
    return [_out(db, j) for j in paginate(request, response, found)]


@router.get("/{job_id}", response_model=JobOut, dependencies=[ReadAccess])
def get_job(job_id: str, db: DbSession) -> JobOut:
    return _out(db, jobs.get_job(db, job_id))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteAccess])
def delete_job(job_id: str, db: DbSession, settings: SettingsDep) -> None:
    """Finished jobs only (409 otherwise): its metrics, events and work files go; its model stays."""
    jobs.delete_job(db, settings, job_id)


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=[WriteAccess])
def cancel_job(job_id: str, db: DbSession) -> JobOut:
    return _out(db, jobs.cancel_job(db, job_id))


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, dependencies=[WriteAccess])
def retry_job(job_id: str, db: DbSession) -> JobOut:
    """A failed or cancelled job is queued again (409 otherwise); it resumes from its last checkpoint, which
    a failed or cancelled job keeps until it is deleted."""
    return _out(db, job_retry.retry_job(db, job_id))


@router.get("/{job_id}/checkpoints", response_model=CheckpointsOut, dependencies=[ReadAccess])
def job_checkpoints(job_id: str, db: DbSession) -> CheckpointsOut:
    chosen, found = checkpoints.job_checkpoints(db, job_id)
    return CheckpointsOut(job_id=job_id, chosen_step=chosen, checkpoints=[CheckpointOut(**asdict(c)) for c in found])


@router.get("/{job_id}/metrics", response_model=MetricsOut, dependencies=[ReadAccess])
def job_metrics(
    job_id: str,
    db: DbSession,
    after_step: Annotated[int | None, Query(ge=-1, description="Only points of steps above this one.")] = None,
    name: Annotated[list[str] | None, Query(description="Only these metric names (repeat the parameter).")] = None,
) -> MetricsOut:
    points = jobs.job_metrics(db, job_id, after_step, name)
    return MetricsOut(job_id=job_id, points=[MetricPointOut.model_validate(p) for p in points])


@router.get(
    "/{job_id}/events",
    response_model=JobEventsOut,
    dependencies=[ReadAccess],
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
def job_events(
    job_id: str,
    db: DbSession,
    request: Request,
    after: Annotated[int | None, Query(ge=0, description="Cursor: the id of the last event seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=40, description="An event id; others are ignored.")
    ] = None,
) -> JobEventsOut | StreamingResponse:
    """Oldest first. With `Accept: text/event-stream`: server-sent events until the job has finished,
    resumable with `Last-Event-ID` (each event once: its `id` is the cursor)."""
    jobs.get_job(db, job_id)
    # EventSource sends back whatever id it saw last; only ours (digits) can be resumed from.
    cursor = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else after
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_event_stream(job_id, cursor), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    found = events.list_events(db, job_id, cursor, limit + 1)
    return JobEventsOut(data=[JobEventOut.model_validate(e) for e in found[:limit]], has_more=len(found) > limit)


def _event_stream(job_id: str, after: int | None) -> Iterator[bytes]:
    """Polls the events table (the worker writes it from another process); ends after the final status.

    The job's status is read before its events: the final status event commits with the status itself,
    so once the job is seen finished, a read that follows holds every event it will ever have.
    """
    cursor, quiet_since = after, time.monotonic()
    while True:
        with session_scope() as s:
            job = s.get(Job, job_id)
            finished = job is None or job.status in jobs.FINAL_STATUSES
            batch = [JobEventOut.model_validate(e) for e in events.list_events(s, job_id, cursor, 500)]
        for event in batch:
            yield format_sse_event(data_str=event.model_dump_json(), id=str(event.id))
            cursor = event.id
        if batch:
            quiet_since = time.monotonic()
            continue
        if finished:
            return
        if time.monotonic() - quiet_since > SSE_KEEPALIVE_SECONDS:
            yield format_sse_event(comment="keep-alive")
            quiet_since = time.monotonic()
        time.sleep(SSE_POLL_SECONDS)
