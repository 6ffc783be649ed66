"""Cohere-compatible rerank (``cohere`` ClientV2 and v1 Client, LangChain's and LlamaIndex's CohereRerank)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.compat_schemas import (
    ApiVersionOut,
    BilledUnitsOut,
    CohereErrorOut,
    RerankedDocumentOut,
    RerankIn,
    RerankMetaOut,
    RerankOut,
    RerankResultOut,
    error_responses,
)
from app.api.deps import DbSession, ReadAccess, SettingsDep
from app.db.tables import new_id
from app.services import compat

router = APIRouter(tags=["cohere-compatible"], responses=error_responses(CohereErrorOut))


def _rerank(body: RerankIn, db: DbSession, settings: SettingsDep, version: str) -> RerankOut:
    texts = body.texts()
    outcome = compat.rerank(db, settings, body.model, body.query, texts, body.top_n, body.max_tokens_per_doc)
    results = [
        RerankResultOut(
            index=r.index,
            relevance_score=r.score,
            document=RerankedDocumentOut(text=texts[r.index]) if body.return_documents else None,
        )
        for r in outcome.results
    ]
    meta = RerankMetaOut(
        api_version=ApiVersionOut(version=version),
        billed_units=BilledUnitsOut(search_units=1),
        score_type=outcome.score_type,
    )
    return RerankOut(id=new_id(), results=results, meta=meta)


@router.post("/v2/rerank", response_model=RerankOut, response_model_exclude_none=True, dependencies=[ReadAccess])
def rerank_v2(body: RerankIn, db: DbSession, settings: SettingsDep) -> RerankOut:
    """Documents by relevance to the query, best first; `meta.score_type` says what `relevance_score` is."""
    return _rerank(body, db, settings, "2")


@router.post("/v1/rerank", response_model=RerankOut, response_model_exclude_none=True, dependencies=[ReadAccess])
def rerank_v1(body: RerankIn, db: DbSession, settings: SettingsDep) -> RerankOut:
    """Cohere's v1 rerank (documents may be `{"text": ...}` objects); the same answer as /v2/rerank."""
    return _rerank(body, db, settings, "1")
