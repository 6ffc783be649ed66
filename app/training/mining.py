"""Hard-negative mining as a dataset operation: rank a dataset's corpus with an embedder, keep negatives
from a rank window, and return FlagEmbedding training rows with the model's scores. No HTTP, no SQL.

The ranking and sampling are :func:`app.training.data.mine_scored_negatives`, the same code the
trainers mine with (plus the scores and the false-negative ceiling), not a second ranking loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.ingest.types import TrainingExample
from app.retrieval.embedder import EmbedderConfig, encode_passages, encode_queries, passage_text
from app.training.data import PreparedData, mine_scored_negatives
from app.training.observer import TrainingCancelled, TrainingObserver
from app.training.params import MiningParams

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ENCODE_CHUNK = 256  # texts between two progress reports / cancel checks
SCORE_DECIMALS = 6  # float32 cosines carry about 7 significant digits; more only bloats the file


@dataclass
class MiningOutcome:
    examples: list[TrainingExample]
    passages: int  # distinct passage texts ranked
    summary: str


def mine_hard_negatives(
    data: PreparedData,
    model: SentenceTransformer,
    config: EmbedderConfig,
    params: MiningParams,
    observer: TrainingObserver,
) -> MiningOutcome:
    """One training row per query of ``data.train_qrels``: its positives and mined negatives, with scores.

    Scores are the model's (cosine when it normalises), so a trainer can distil from them. Negatives
    are never a judged document of the query, nor a passage with the same text as one (BEIR corpora
    repeat texts under several ids); with ``false_negative_margin`` a candidate scoring above the
    query's lowest positive minus the margin is left out as a likely unjudged positive.
    """
    # One entry per distinct, non-empty passage text: what a training file can hold (it stores texts).
    text_of = {did: passage_text(doc) for did, doc in data.corpus.items()}
    canonical: dict[str, str] = {}
    for did, text in text_of.items():
        if text.strip():
            canonical.setdefault(text, did)
    canon_of = {did: canonical[text] for did, text in text_of.items() if text in canonical}
    # Length order keeps padding low inside each chunk (as encode_passages does within a call).
    doc_ids = sorted(canonical.values(), key=lambda d: len(text_of[d]))
    query_ids = list(data.train_qrels)
    if not doc_ids:
        raise ValueError("the corpus has no non-empty passage to mine from")
    total = len(doc_ids) + len(query_ids)

    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        observer.on_progress(done, total)
        if observer.should_stop():
            raise TrainingCancelled(f"cancelled at step {done} of {total} (texts encoded)")

    observer.on_progress(0, total)
    corpus_chunks = []
    for start in range(0, len(doc_ids), ENCODE_CHUNK):
        chunk = doc_ids[start : start + ENCODE_CHUNK]
        corpus_chunks.append(encode_passages(model, config, [data.corpus[d] for d in chunk]))
        report(len(chunk))
    query_chunks = []
    for start in range(0, len(query_ids), ENCODE_CHUNK):
        chunk = query_ids[start : start + ENCODE_CHUNK]
        query_chunks.append(encode_queries(model, config, [data.train_queries[q] for q in chunk]))
        report(len(chunk))
    corpus_vectors = np.concatenate(corpus_chunks)
    query_vectors = np.concatenate(query_chunks)
    row_of = {did: i for i, did in enumerate(doc_ids)}

    positives: dict[str, list[tuple[str, float]]] = {}
    excluded: dict[str, set[str]] = {}
    ceiling: dict[str, float] = {}
    for i, qid in enumerate(query_ids):
        judged = data.train_qrels[qid]
        excluded[qid] = {canon_of[d] for d in judged if d in canon_of}
        relevant = dict.fromkeys(canon_of[d] for d, grade in judged.items() if grade > 0 and d in canon_of)
        positives[qid] = [(d, float(corpus_vectors[row_of[d]] @ query_vectors[i])) for d in relevant]
        if positives[qid] and params.false_negative_margin is not None:
            ceiling[qid] = min(s for _, s in positives[qid]) - params.false_negative_margin

    lo, hi = params.negative_rank_range
    mined = mine_scored_negatives(
        query_vectors, query_ids, corpus_vectors, doc_ids, excluded, (lo, hi),
        params.negatives_per_query, params.seed, ceiling,  # empty without a margin: no ceiling
        params.negative_sampling,
    )  # fmt: skip

    examples: list[TrainingExample] = []
    short = empty = 0
    for qid in query_ids:
        if not positives[qid]:
            continue  # every relevant document is an empty passage: nothing a training file can hold
        negatives = sorted(mined[qid], key=lambda pair: -pair[1])  # hardest first, for whoever reads the file
        short += len(negatives) < params.negatives_per_query
        empty += not negatives
        examples.append(
            TrainingExample(
                query=data.train_queries[qid],
                pos=[text_of[d] for d, _ in positives[qid]],
                neg=[text_of[d] for d, _ in negatives],
                pos_scores=[round(s, SCORE_DECIMALS) for _, s in positives[qid]],
                neg_scores=[round(s, SCORE_DECIMALS) for _, s in negatives],
            )
        )
    if not examples:
        raise ValueError("no query has a non-empty relevant passage: nothing to mine for")
    observer.on_progress(total, total)
    margin = "off" if params.false_negative_margin is None else f"{params.false_negative_margin:g}"
    summary = (
        f"mined {sum(len(e.neg) for e in examples)} negatives for {len(examples)} queries from ranks [{lo}, {hi}) "
        f"of {len(doc_ids)} passages (false-negative margin {margin}); "
        f"{short} queries got fewer than {params.negatives_per_query}, {empty} none"
    )
    if empty:
        summary += (
            " (a query whose positive the model scores low has every candidate above its false-negative "
            "ceiling; such rows carry no teacher score, so a job training on them does not distil)"
        )
    observer.on_message(summary)
    return MiningOutcome(examples=examples, passages=len(doc_ids), summary=summary)
