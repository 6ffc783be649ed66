"""Evaluate a bi-encoder (alone or followed by a reranker) on held-out queries.

The whole given corpus is the candidate set and FAISS exact inner product is the search, as in
BEIR/MTEB, so the base model's step-0 figure matches the published one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.core.cancellation import TrainingCancelled
from app.evaluation.metrics import Qrels, evaluate_run, mean_metrics, per_query_metrics
from app.ingest.types import Document
from app.retrieval.embedder import EmbedderConfig, EncodingStopped, encode_passages, encode_queries, passage_text
from app.retrieval.fusion import fuse
from app.retrieval.reranker import rerank_logits
from app.retrieval.vector_index import VectorIndex

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer


@dataclass
class RetrievalEvaluation:
    metrics: dict[str, float]
    run: dict[str, dict[str, float]]
    corpus_vectors: np.ndarray
    doc_ids: list[str]
    per_query: dict[str, dict[str, float]] | None = None  # query -> metric -> value (for paired comparisons)


@dataclass
class CorpusVectors:
    """One encoding of a corpus by one model state: every query set of that state is searched against it."""

    vectors: np.ndarray
    doc_ids: list[str]

    def restricted_to(self, doc_ids: list[str]) -> CorpusVectors | None:
        """The rows of ``doc_ids``, in that order; None when one of them was not encoded here."""
        row_of = {doc: row for row, doc in enumerate(self.doc_ids)}
        if any(doc not in row_of for doc in doc_ids):
            return None
        return CorpusVectors(self.vectors[[row_of[doc] for doc in doc_ids]], list(doc_ids))


@dataclass
class KnownVectors:
    """A corpus already encoded by the same model and configuration (an index's rows): a job that would
    encode it again takes these instead. ``source`` names where they came from, for the job's messages."""

    encoded: CorpusVectors
    source: str


def encode_corpus(
    model: SentenceTransformer,
    config: EmbedderConfig,
    corpus: Mapping[str, Document],
    should_stop: Callable[[], bool] | None = None,
    stage: str = "an evaluation",
) -> CorpusVectors:
    """``should_stop`` is checked between chunks of passages; True raises TrainingCancelled naming ``stage``."""
    was_training = model.training
    model.eval()
    try:
        doc_ids = list(corpus)
        return CorpusVectors(encode_passages(model, config, [corpus[d] for d in doc_ids], should_stop=should_stop),
                             doc_ids)  # fmt: skip
    except EncodingStopped as exc:
        raise TrainingCancelled(f"cancelled during {stage}, while encoding the corpus ({exc})") from None
    finally:
        model.train(was_training)


def evaluate_queries(
    model: SentenceTransformer,
    config: EmbedderConfig,
    encoded: CorpusVectors,
    queries: Mapping[str, str],
    qrels: Qrels,
    top_k: int = 100,
) -> RetrievalEvaluation:
    """Search every judged query against an encoded corpus; score with pytrec_eval (per query and mean)."""
    was_training = model.training
    model.eval()
    try:
        query_ids = [q for q in qrels if q in queries]
        query_vectors = encode_queries(model, config, [queries[q] for q in query_ids])
    finally:
        model.train(was_training)
    hits = VectorIndex.build(encoded.vectors, encoded.doc_ids).search(query_vectors, top_k)
    run = {q: dict(h) for q, h in zip(query_ids, hits, strict=True)}
    per_query = per_query_metrics(qrels, run)
    return RetrievalEvaluation(mean_metrics(per_query), run, encoded.vectors, encoded.doc_ids, per_query)


def evaluate_embedder(
    model: SentenceTransformer,
    config: EmbedderConfig,
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    qrels: Qrels,
    top_k: int = 100,
) -> RetrievalEvaluation:
    """Encode the corpus, search every judged query, score with pytrec_eval.

    The corpus vectors come back too: the trainer reuses them to mine hard negatives instead of
    encoding the corpus a second time (the costliest step on a CPU).
    """
    return evaluate_queries(model, config, encode_corpus(model, config, corpus), queries, qrels, top_k)


@dataclass
class RerankEvaluation:
    metrics: dict[str, float]
    run: dict[str, dict[str, float]]  # reranked docs carry their logits; the tail sits below them
    score_std: float  # mean over queries of the std of the scores: near 0 means collapse
    positive_share: float  # share of candidates with a positive logit
    fused_metrics: dict[str, float] | None = None  # with first_stage_weight > 0: the fused order's metrics
    fused_run: dict[str, dict[str, float]] | None = None
    # Per-query metrics of the order search serves without a calibration (fused when fusing), for paired
    # comparisons: the same scoring as the means above, kept rather than done again.
    served_per_query: dict[str, dict[str, float]] = field(default_factory=dict)


def evaluate_reranker(
    model: CrossEncoder,
    candidates: Mapping[str, Mapping[str, float]],
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    qrels: Qrels,
    rerank_k: int,
    format_query=lambda q: q,
    first_stage_weight: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
    stage: str = "an evaluation",
) -> RerankEvaluation:
    """Rerank each query's top ``rerank_k`` first-stage candidates; below them the first stage's order stays.

    With ``first_stage_weight`` > 0 the fused order (app.retrieval.fusion) is scored too, from the
    same logits: it costs no extra model call. ``should_stop`` is checked before each query; True
    raises TrainingCancelled naming ``stage``.
    """
    was_training = model.training
    model.eval()
    run: dict[str, dict[str, float]] = {}
    stds: list[float] = []
    positives = total = 0
    try:
        for done, (qid, ranking) in enumerate(candidates.items()):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled during {stage}, while reranking ({done} of {len(candidates)} "
                                        "queries reranked)")  # fmt: skip
            ordered = sorted(ranking.items(), key=lambda item: item[1], reverse=True)
            head = [doc for doc, _ in ordered[:rerank_k]]
            logits = rerank_logits(model, format_query(queries[qid]), [passage_text(corpus[d]) for d in head])
            # Reranked docs go above the rest; the tail keeps its first-stage order below them.
            bottom = float(logits.min()) - 1.0 if len(logits) else 0.0
            run[qid] = {d: float(s) for d, s in zip(head, logits, strict=True)}
            for rank, (doc, _) in enumerate(ordered[rerank_k:]):
                run[qid][doc] = bottom - rank
            if len(logits) > 1:
                stds.append(float(np.std(logits)))
            positives += int((logits > 0).sum())
            total += len(logits)
    finally:
        model.train(was_training)
    fused = fuse_runs(candidates, run, rerank_k, first_stage_weight) if first_stage_weight > 0 else None
    own = per_query_metrics(qrels, run)
    fused_per_query = per_query_metrics(qrels, fused) if fused is not None else None
    return RerankEvaluation(
        metrics=mean_metrics(own),
        run=run,
        score_std=float(np.mean(stds)) if stds else 0.0,
        positive_share=positives / total if total else 0.0,
        fused_metrics=mean_metrics(fused_per_query) if fused_per_query is not None else None,
        fused_run=fused,
        served_per_query=fused_per_query if fused_per_query is not None else own,
    )


def fuse_runs(
    first_stage_run: Mapping[str, Mapping[str, float]],
    reranked_run: Mapping[str, Mapping[str, float]],
    rerank_k: int,
    first_stage_weight: float,
) -> dict[str, dict[str, float]]:
    """The two-stage run as search serves it with fusion: each query's top ``rerank_k`` (by the first
    stage) ordered by the fused score, the rest below them in first-stage order."""
    fused: dict[str, dict[str, float]] = {}
    for qid, ranking in first_stage_run.items():
        ordered = sorted(ranking.items(), key=lambda item: item[1], reverse=True)
        head = ordered[:rerank_k]
        scores = fuse(
            np.array([s for _, s in head]), np.array([reranked_run[qid][d] for d, _ in head]), first_stage_weight
        )
        fused[qid] = {d: float(s) for (d, _), s in zip(head, scores, strict=True)}
        for rank, (doc, _) in enumerate(ordered[rerank_k:]):
            fused[qid][doc] = -1.0 - rank  # fused scores lie in 0..1
    return fused


# The first-stage weights a fusion curve scores: 0 (the reranker's order) to 1 (the first stage's).
FUSION_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def fusion_curve(
    first_stage_run: Mapping[str, Mapping[str, float]],
    reranked_run: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    rerank_k: int,
) -> dict[float, dict[str, float]]:
    """The fused order's metrics at every weight of ``FUSION_GRID``, from the same logits (no model call)."""
    return {w: evaluate_run(qrels, fuse_runs(first_stage_run, reranked_run, rerank_k, w)) for w in FUSION_GRID}


def weight_of_best(curve: Mapping[float, Mapping[str, float]], metric: str) -> float:
    """The curve's weight with the best ``metric``; ties go to the weight nearest 0.5 (the fixed default)."""
    return max(curve, key=lambda w: (curve[w][metric], -abs(w - 0.5)))


def best_fusion_weight(
    first_stage_run: Mapping[str, Mapping[str, float]],
    reranked_run: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    rerank_k: int,
    metric: str,
) -> tuple[float, dict[str, float]]:
    """The grid weight whose fused order scores best on these queries by ``metric``, and its metrics.

    A choice made on the queries it is then reported on flatters them a little: report it on other
    queries where it matters.
    """
    curve = fusion_curve(first_stage_run, reranked_run, qrels, rerank_k)
    weight = weight_of_best(curve, metric)
    return weight, curve[weight]
