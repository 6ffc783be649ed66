from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import DbSession, ReadAccess, SettingsDep
from app.api.schemas import SearchHitOut, SearchIn, SearchOut
from app.services import search as search_service

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchOut, dependencies=[ReadAccess])
def search(body: SearchIn, db: DbSession, settings: SettingsDep) -> SearchOut:
    hits = search_service.search(
        db, settings, body.index_id, body.query, body.top_k, body.recall_k,
        body.reranker_id, body.threshold, body.return_text, body.force,
    )  # fmt: skip
    return SearchOut(results=[SearchHitOut(**asdict(h)) for h in hits])
