from dataclasses import asdict

from fastapi import APIRouter, Response

from app.api.deps import DbSession, ReadAccess, SettingsDep
from app.api.schemas import BUSY_RESPONSES, SearchHitOut, SearchIn, SearchOut
from app.services import search as search_service
from app.services import telemetry

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchOut, dependencies=[ReadAccess], responses=BUSY_RESPONSES)
def search(body: SearchIn, db: DbSession, settings: SettingsDep, response: Response) -> SearchOut:
    queries = body.queries if body.queries is not None else [body.query or ""]
    outcome = search_service.search(
        db, settings, body.index_id, queries, body.top_k, body.recall_k,
        body.reranker_id, body.threshold, body.return_text, body.force, body.int8, body.first_stage_weight,
    )  # fmt: skip
    # The W3C Server-Timing header: the service's own time by stage, beside the client's round trip.
    telemetry.observe_search(outcome.timings_ms)
    response.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in outcome.timings_ms.items())
    lists = [[SearchHitOut(**asdict(h)) for h in hits] for hits in outcome.hits]
    return SearchOut(
        index_id=outcome.index_id,
        results=lists[0],
        batch=lists if body.queries is not None else None,
        calibrated=outcome.calibrated,
        calibration_map=outcome.calibration_map,
    )
