"""Two-stage search: FAISS recall with the index's own embedder, optional cross-encoder rerank.

Everything loaded (index, corpus texts, models) stays warm in a bounded per-process cache; the
embedder settings used are the ones the index recorded when it was built, never a guess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidRequestError
from app.db.tables import Dataset
from app.ingest import Document
from app.retrieval.device import resolve_device
from app.retrieval.embedder import encode_queries, passage_text
from app.retrieval.fusion import fuse
from app.retrieval.reranker import rerank_logits, sigmoid
from app.services import serving
from app.services.indexes import resolve_index
from app.services.models import get_model


@dataclass
class Hit:
    doc_id: str
    text: str | None
    score: float
    recall_score: float
    rerank_score: float | None
    fused_score: float | None = None


@dataclass
class SearchOutcome:
    index_id: str
    hits: list[list[Hit]]  # one ranked list per query
    # Where the time went (ms): "load" (cache misses), "recall" (encode + FAISS), "rerank" (all
    # queries' cross-encoder passes), "total". Served as a Server-Timing header, so a client can tell
    # the models' time from the HTTP and bookkeeping around it.
    timings_ms: dict[str, float] = field(default_factory=dict)


def search(
    session: Session,
    settings: Settings,
    index_ref: str,
    queries: list[str],
    top_k: int,
    recall_k: int,
    reranker_id: str | None,
    threshold: float | None,
    return_text: bool = True,
    force: bool = False,
    int8: bool = False,
    first_stage_weight: float | None = None,
) -> SearchOutcome:
    """``first_stage_weight``: score fusion of the reranked candidates (app.retrieval.fusion); default:
    the weight the reranker was trained and selected with (0, the reranker's order, for older models)."""
    if top_k > settings.max_top_k or recall_k > settings.max_recall_k:
        raise InvalidRequestError(f"top_k is at most {settings.max_top_k} and recall_k at most {settings.max_recall_k}")
    if len(queries) > settings.max_batch_queries:
        raise InvalidRequestError(f"at most {settings.max_batch_queries} queries per request")
    started = time.perf_counter()
    index_row = resolve_index(session, index_ref)
    if index_row.status != "ready":
        raise ConflictError(f"index '{index_row.id}' is {index_row.status}, not ready")
    reranker = get_model(session, reranker_id) if reranker_id else None
    if reranker is not None and reranker.kind != "reranker" and not force:
        raise InvalidRequestError(
            f"model '{reranker.id}' is an {reranker.kind}, not a reranker: as a cross-encoder it would get "
            "a randomly initialised head. Train a reranker job, or pass force=true."
        )
    embedder_row = get_model(session, index_row.model_id)
    dataset = session.get(Dataset, index_row.dataset_id)
    device = resolve_device(settings.device)
    int8 = int8 and device == "cpu"  # dynamic int8 quantisation is a CPU path

    loading = time.perf_counter()
    vector_index, config = serving.index(settings, index_row)
    embedder = serving.embedder(settings, embedder_row, config.max_seq_length, int8)
    corpus: dict[str, Document] = serving.corpus(settings, dataset)
    rerank_model = None
    if reranker is not None:
        if first_stage_weight is None:
            first_stage_weight = float(reranker.config.get("first_stage_weight", 0.0))
        rerank_model = serving.reranker(settings, reranker, force, int8)
    recalling = time.perf_counter()
    recalled = vector_index.search(encode_queries(embedder, config, queries), max(recall_k, top_k))
    recall_done = time.perf_counter()
    rerank_seconds = 0.0
    results = []
    for query, found in zip(queries, recalled, strict=True):
        hits = [Hit(d, None, s, s, None) for d, s in found]
        if rerank_model is not None and hits:
            texts = [passage_text(corpus[h.doc_id]) for h in hits]
            reranking = time.perf_counter()
            logits = rerank_logits(rerank_model, config.format_query(query), texts, settings.rerank_batch_size)
            rerank_seconds += time.perf_counter() - reranking
            for hit, logit in zip(hits, logits, strict=True):
                hit.rerank_score, hit.score = float(logit), sigmoid(float(logit))
            if first_stage_weight:
                fused = fuse(np.array([h.recall_score for h in hits]), logits, first_stage_weight)
                for hit, value in zip(hits, fused, strict=True):
                    hit.fused_score = float(value)
                hits.sort(key=lambda h: h.fused_score, reverse=True)
            else:
                hits.sort(key=lambda h: h.score, reverse=True)
        if threshold is not None:
            hits = [h for h in hits if h.score >= threshold]
        hits = hits[:top_k]
        if return_text:
            for hit in hits:
                hit.text = passage_text(corpus[hit.doc_id])
        results.append(hits)
    timings = {"load": recalling - loading, "recall": recall_done - recalling, "rerank": rerank_seconds}
    timings["total"] = time.perf_counter() - started
    return SearchOutcome(index_row.id, results, {k: round(v * 1000, 1) for k, v in timings.items()})
