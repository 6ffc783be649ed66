from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from app.api.deps import DbSession, ReadAccess, SettingsDep, WriteAccess
from app.api.schemas import JobIn, JobOut, MetricPointOut, MetricsOut
from app.db.tables import Job, Model
from app.services import jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _out(db: Session, job: Job) -> JobOut:
    out = JobOut.model_validate(job)
    if job.model_id and (model := db.get(Model, job.model_id)) is not None:
        out.better_than_base, out.verdict = model.better_than_base, model.verdict
    return out


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, dependencies=[WriteAccess])
def create_job(body: JobIn, db: DbSession, settings: SettingsDep) -> JobOut:
    # Only what the client sent: a mine_negatives job refuses any eval field, even the default seed.
    spec = body.eval.model_dump(exclude_none=True, exclude_unset=True)
    allow_overlap = bool(spec.pop("allow_overlap", False))
    job = jobs.create_job(db, settings, body.kind, body.dataset_id, body.base_model, spec, body.params, allow_overlap)
    return _out(db, job)


@router.get("", response_model=list[JobOut], dependencies=[ReadAccess])
def list_jobs(db: DbSession) -> list[JobOut]:
    return [_out(db, j) for j in jobs.list_jobs(db)]


@router.get("/{job_id}", response_model=JobOut, dependencies=[ReadAccess])
def get_job(job_id: str, db: DbSession) -> JobOut:
    return _out(db, jobs.get_job(db, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=[WriteAccess])
def cancel_job(job_id: str, db: DbSession) -> JobOut:
    return _out(db, jobs.cancel_job(db, job_id))


@router.get("/{job_id}/metrics", response_model=MetricsOut, dependencies=[ReadAccess])
def job_metrics(job_id: str, db: DbSession) -> MetricsOut:
    points = jobs.job_metrics(db, job_id)
    return MetricsOut(job_id=job_id, points=[MetricPointOut.model_validate(p) for p in points])
