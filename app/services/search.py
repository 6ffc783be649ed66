"""Two-stage search: FAISS recall with the index's own embedder, optional cross-encoder rerank.

Everything loaded (index, corpus texts, models) stays warm in a bounded per-process cache; the
embedder settings used are the ones the index recorded when it was built, never a guess.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import CalibrationMissingError, ConflictError, InvalidRequestError
from app.db.tables import Dataset, Model
from app.evaluation.calibration import Calibration, score_query
from app.ingest import Document
from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig, batched_queries, passage_text
from app.retrieval.reranker import batched_logits
from app.services import serving
from app.services.indexes import resolve_index
from app.services.models import get_model, model_calibration


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
    calibrated: bool = False  # `score` is the scoring model's calibrated P(relevant)
    calibration_map: str | None = None  # which of its maps scored (app.evaluation.calibration)


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
    calibration = _calibration_for(
        settings, reranker or embedder_row, index_row.model_id, reranker is not None, threshold
    )
    dataset = session.get(Dataset, index_row.dataset_id)
    device = resolve_device(settings.device)
    int8 = int8 and device == "cpu"  # dynamic int8 quantisation is a CPU path

    loading = time.perf_counter()
    vector_index, config = serving.index(settings, index_row)
    embedder = serving.served_embedder(settings, embedder_row, config.max_seq_length, int8)
    corpus: dict[str, Document] = serving.corpus(settings, dataset)
    rerank_model = None
    if reranker is not None:
        if first_stage_weight is None:
            first_stage_weight = float(reranker.config.get("first_stage_weight", 0.0))
        rerank_model = serving.served_reranker(settings, reranker, force, int8)
    recalling = time.perf_counter()
    query_vectors = batched_queries(embedder.batcher, embedder.model, embedder.tokens, config, queries)
    recalled = vector_index.search(query_vectors, max(recall_k, top_k))
    recall_done = time.perf_counter()
    all_hits = [[Hit(d, None, s, s, None) for d, s in found] for found in recalled]
    all_logits = _rerank_all(rerank_model, config, queries, all_hits, corpus)
    rerank_seconds = time.perf_counter() - recall_done
    results = []
    for hits, logits in zip(all_hits, all_logits, strict=True):
        hits = _scored(hits, logits, calibration, index_row.model_id, first_stage_weight or 0.0)
        if threshold is not None:  # ordered by the calibrated score, so this keeps a prefix of the order
            hits = [h for h in hits if h.score >= threshold]
        hits = hits[:top_k]
        if return_text:
            for hit in hits:
                hit.text = passage_text(corpus[hit.doc_id])
        results.append(hits)
    timings = {"load": recalling - loading, "recall": recall_done - recalling, "rerank": rerank_seconds}
    timings["total"] = time.perf_counter() - started
    used_map = calibration.map_for(index_row.model_id)[0] if calibration else None
    timings_ms = {k: round(v * 1000, 1) for k, v in timings.items()}
    return SearchOutcome(index_row.id, results, timings_ms, calibration is not None, used_map)


def _rerank_all(
    served: serving.Served | None,
    config: EmbedderConfig,
    queries: list[str],
    all_hits: list[list[Hit]],
    corpus: dict[str, Document],
) -> list[np.ndarray | None]:
    """Every query's candidates' logits (None without a reranker), all the request's pairs submitted at
    once so that they share forward passes with each other and with other requests'."""
    if served is None:
        return [None] * len(queries)
    pairs = [
        (config.format_query(query), passage_text(corpus[hit.doc_id]))
        for query, hits in zip(queries, all_hits, strict=True)
        for hit in hits
    ]
    logits = batched_logits(served.batcher, served.model, served.tokens, pairs)
    bounds = np.cumsum([0] + [len(hits) for hits in all_hits])
    return [logits[start:end] if end > start else None for start, end in itertools.pairwise(bounds)]


def _calibration_for(
    settings: Settings, row: Model, index_model: str, reranking: bool, threshold: float | None
) -> Calibration | None:
    """The scoring model's calibration (the reranker's, else the index embedder's) with a map for the
    index's first stage, or None. A threshold on a model without one is refused: its raw scores are no
    probability, so the cut would be arbitrary."""
    calibration, reason = model_calibration(settings, row)
    wanted = "reranker" if reranking else "embedder"
    if calibration is not None and calibration.kind != wanted:
        calibration, reason = None, f"its calibration is an {calibration.kind}'s, and it is used as the {wanted}"
    if calibration is not None and (gap := calibration.gap(index_model)):
        calibration, reason = None, f"over an index of '{index_model}' its calibration has {gap}"
    if calibration is None and threshold is not None:
        raise CalibrationMissingError(row.id, reason or "no calibration fitted")
    return calibration


def _scored(
    hits: list[Hit],
    logits: np.ndarray | None,
    calibration: Calibration | None,
    index_model: str,
    first_stage_weight: float,
) -> list[Hit]:
    """One query's hits with their served scores, best first (app.evaluation.calibration.score_query:
    the same code the job's calibration report measures)."""
    if not hits:
        return hits
    recall = np.array([h.recall_score for h in hits])
    scored = score_query(recall, logits, calibration, index_model, first_stage_weight)
    for i, hit in enumerate(hits):
        hit.score = float(scored.score[i])
        if logits is not None:
            hit.rerank_score = float(logits[i])
        if scored.fused is not None:
            hit.fused_score = float(scored.fused[i])
    return [hits[i] for i in scored.order]
