"""Text Embeddings Inference-compatible routes, one set per model (TEI clients send no model name)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.compat_schemas import TeiEmbedIn, TeiErrorOut, TeiInfoOut, TeiRankOut, TeiRerankIn, error_responses
from app.api.deps import DbSession, ReadAccess, SettingsDep
from app.api.routes.openai_compat import texts_of
from app.services import compat
from app.services.model_refs import resolve_model

router = APIRouter(prefix="/tei/{model}", tags=["tei-compatible"], responses=error_responses(TeiErrorOut))
ModelRef = Annotated[str, Path(description="A Retune model id, its name, or an alias pointing at it.")]


@router.post("/embed", response_model=list[list[float]], dependencies=[ReadAccess])
def embed(model: ModelRef, body: TeiEmbedIn, db: DbSession, settings: SettingsDep) -> list[list[float]]:
    """`prompt_name: "query"` applies the model's query instruction; `truncate: false` refuses over-long texts."""
    input_type = compat.input_type_for_prompt(body.prompt_name)
    max_tokens = None
    if body.truncate is False:
        max_tokens = compat.max_input_tokens(settings, resolve_model(db, model, "embedder"))
    result = compat.embed(
        db, settings, model, texts_of(body.inputs), input_type, body.dimensions, body.normalize, max_tokens
    )
    return result.vectors.tolist()


@router.post("/rerank", response_model=list[TeiRankOut], response_model_exclude_none=True, dependencies=[ReadAccess])
def rerank(model: ModelRef, body: TeiRerankIn, db: DbSession, settings: SettingsDep) -> list[TeiRankOut]:
    """Texts by relevance to the query, best first; `raw_scores: true` gives the logits."""
    outcome = compat.rerank(db, settings, model, body.query, body.texts)
    return [
        TeiRankOut(
            index=r.index,
            score=r.logit if body.raw_scores else r.score,
            text=body.texts[r.index] if body.return_text else None,
        )
        for r in outcome.results
    ]


@router.get("/info", response_model=TeiInfoOut, dependencies=[ReadAccess])
def info(model: ModelRef, db: DbSession, settings: SettingsDep) -> TeiInfoOut:
    row = resolve_model(db, model)
    model_type = {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    if row.kind == "embedder":
        model_type = {"embedding": {"pooling": compat.pooling_mode(settings, row)}}
    max_length = compat.max_input_tokens(settings, row)
    return TeiInfoOut(
        model_id=row.id,
        model_dtype="float32",
        model_type=model_type,
        max_concurrent_requests=512,
        max_input_length=max_length,
        max_batch_tokens=max_length * settings.max_embed_inputs,
        max_client_batch_size=settings.max_embed_inputs if row.kind == "embedder" else settings.max_rerank_documents,
        auto_truncate=True,
        tokenization_workers=1,
        version="retune-0.1.0",
    )
