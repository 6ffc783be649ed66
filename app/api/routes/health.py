"""``/health``: the database, the broker and the workers seen alive, for probes and for people.

A database that does not answer is a 503 (the API can serve nothing); a broker down or a queue with
no live worker is ``degraded`` with HTTP 200 (searches still work; jobs wait), so a load balancer
keeps the replica while the answer says what is missing.
"""

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import DbSession, SettingsDep
from app.api.schemas import HealthOut, WorkerOut
from app.services import dispatch
from app.services.supervision import live_workers

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(db: DbSession, settings: SettingsDep) -> HealthOut:
    db.execute(text("SELECT 1"))
    workers = live_workers(db, settings.job_stale_seconds)
    queues = {
        name: sum(name in w.queues.split(",") for w in workers)
        for name in (settings.resolved_gpu_queue, settings.resolved_cpu_queue)
    }
    broker = "ok" if dispatch.broker_reachable() else "unreachable"
    healthy = broker == "ok" and all(queues.values())
    return HealthOut(
        status="ok" if healthy else "degraded",
        database="ok",
        broker=broker,
        queues=queues,
        workers=[WorkerOut.model_validate(w) for w in workers],
    )
