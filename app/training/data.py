"""Turn a stored dataset into training queries and a held-out evaluation split.

The rule that matters: no evaluation query is ever trained on. Queries are held out by id, and a
training query whose text equals a held-out query's text is dropped too (BEIR sets repeat texts).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from app.evaluation.splits import holdout_split
from app.ingest import (
    Document,
    RetrievalSet,
    read_retrieval_set,
    read_training_examples,
    training_examples_to_retrieval_set,
)


@dataclass(frozen=True)
class EvalSpec:
    """Either a named qrels split, or a fraction of the training queries set aside by seed."""

    split: str | None = None
    holdout_fraction: float | None = None
    seed: int = 42
    max_queries: int | None = None  # evaluate a seeded sample of the held-out queries
    max_corpus_docs: int | None = None  # judged docs + a seeded sample of the rest (cheap on CPU)

    @property
    def label(self) -> str:
        label = self.split or f"heldout-{self.holdout_fraction:g}-seed{self.seed}"
        if self.max_queries:
            label += f"/q{self.max_queries}"
        if self.max_corpus_docs:
            label += f"/corpus{self.max_corpus_docs}"
        return label


@dataclass
class PreparedData:
    corpus: dict[str, Document]
    train_queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    eval_queries: dict[str, str]
    eval_qrels: dict[str, dict[str, int]]
    eval_label: str
    # Negatives that came with the dataset (FlagEmbedding JSONL), by training query id.
    dataset_negatives: dict[str, list[str]] = field(default_factory=dict)
    # The teacher's scores that came with the dataset (pos_scores / neg_scores): query id -> doc id -> score.
    teacher_scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def grades(self) -> list[int]:
        return sorted({g for docs in self.train_qrels.values() for g in docs.values()})


def _read(
    dataset_dir: Path, dataset_format: str, train_split: str
) -> tuple[RetrievalSet, dict[str, list[str]], dict[str, dict[str, float]], str]:
    """The stored set, the file's own negatives and teacher scores by query, and the split to train on."""
    if dataset_format == "training_jsonl":
        examples = read_training_examples(dataset_dir)
        rs = training_examples_to_retrieval_set(examples)
        text_to_doc = {doc.text: did for did, doc in rs.corpus.items()}
        query_to_id = {text: qid for qid, text in rs.queries.items()}
        positives = rs.qrels.get("train", {})
        negatives: dict[str, list[str]] = {}
        teacher: dict[str, dict[str, float]] = {}
        for ex in examples:
            qid = query_to_id[ex.query]
            bucket = negatives.setdefault(qid, [])
            scored = teacher.setdefault(qid, {})
            for text, score in zip(ex.pos, ex.pos_scores or [None] * len(ex.pos), strict=True):
                if score is not None:
                    scored.setdefault(text_to_doc[text], score)  # a pair scored on two lines: the first wins
            for text, score in zip(ex.neg, ex.neg_scores or [None] * len(ex.neg), strict=True):
                doc = text_to_doc[text]
                # A text that is a positive of the same query (on any line) is never its negative.
                if doc in positives.get(qid, {}):
                    continue
                if doc not in bucket:
                    bucket.append(doc)
                if score is not None:
                    scored.setdefault(doc, score)
        train_split = "train"
    else:
        rs = read_retrieval_set(dataset_dir)
        negatives, teacher = {}, {}
    if train_split not in rs.qrels:
        raise ValueError(f"the dataset has no qrels split '{train_split}' (it has: {', '.join(sorted(rs.qrels))})")
    return rs, negatives, teacher, train_split


def prepare(
    dataset_dir: Path,
    dataset_format: str,
    spec: EvalSpec,
    train_split: str = "train",
    max_train_queries: int | None = None,
) -> PreparedData:
    rs, negatives, teacher, train_split = _read(dataset_dir, dataset_format, train_split)
    candidates = rs.qrels[train_split]

    if spec.split:
        if spec.split not in rs.qrels:
            raise ValueError(f"the dataset has no qrels split '{spec.split}' (it has: {', '.join(sorted(rs.qrels))})")
        if spec.split == train_split:
            raise ValueError("the evaluation split must differ from the training split; use holdout_fraction")
        eval_qrels = rs.qrels[spec.split]
        train_ids = [q for q in candidates if q not in eval_qrels]
    else:
        train_ids, eval_ids = holdout_split(candidates, spec.holdout_fraction or 0.2, spec.seed)
        eval_qrels = {q: candidates[q] for q in eval_ids}

    if spec.max_queries and len(eval_qrels) > spec.max_queries:
        kept = sorted(random.Random(spec.seed).sample(sorted(eval_qrels), spec.max_queries))
        eval_qrels = {q: eval_qrels[q] for q in kept}
    eval_texts = {rs.queries[q].strip().lower() for q in eval_qrels}
    train_ids = [q for q in train_ids if rs.queries[q].strip().lower() not in eval_texts]
    train_qrels = {q: candidates[q] for q in train_ids if any(g > 0 for g in candidates[q].values())}
    if max_train_queries and len(train_qrels) > max_train_queries:
        kept = sorted(random.Random(spec.seed).sample(sorted(train_qrels), max_train_queries))
        train_qrels = {q: train_qrels[q] for q in kept}
    if not train_qrels:
        raise ValueError("no training query with a relevant document is left after holding out the evaluation split")
    corpus = rs.corpus
    if spec.max_corpus_docs and len(corpus) > spec.max_corpus_docs:
        corpus = _sub_corpus(corpus, [eval_qrels, train_qrels], negatives, train_qrels, spec)
    return PreparedData(
        corpus=corpus,
        train_queries={q: rs.queries[q] for q in train_qrels},
        train_qrels=train_qrels,
        eval_queries={q: rs.queries[q] for q in eval_qrels},
        eval_qrels={q: dict(d) for q, d in eval_qrels.items()},
        eval_label=spec.label,
        dataset_negatives={q: n for q, n in negatives.items() if q in train_qrels and n},
        teacher_scores={q: t for q, t in teacher.items() if q in train_qrels and t},
    )


def read_training_split(dataset_dir: Path, dataset_format: str, train_split: str = "train") -> PreparedData:
    """Every query of the training split that has a relevant document, and the whole corpus; nothing held out.

    For operations that train nothing and evaluate nothing (negative mining), so :func:`prepare`'s
    hold-out would only lose queries. The eval fields are empty.
    """
    rs, negatives, teacher, train_split = _read(dataset_dir, dataset_format, train_split)
    train_qrels = {q: dict(d) for q, d in rs.qrels[train_split].items() if any(g > 0 for g in d.values())}
    if not train_qrels:
        raise ValueError(f"no query of split '{train_split}' has a relevant document")
    return PreparedData(
        corpus=rs.corpus,
        train_queries={q: rs.queries[q] for q in train_qrels},
        train_qrels=train_qrels,
        eval_queries={},
        eval_qrels={},
        eval_label="none",
        dataset_negatives={q: n for q, n in negatives.items() if q in train_qrels and n},
        teacher_scores={q: t for q, t in teacher.items() if q in train_qrels and t},
    )


def mine_negatives(
    query_vectors: np.ndarray,
    query_ids: list[str],
    corpus_vectors: np.ndarray,
    doc_ids: list[str],
    judged: Mapping[str, Mapping[str, int]],
    rank_range: tuple[int, int],
    per_query: int,
    seed: int,
    sampling: Literal["random", "top"] = "random",
) -> dict[str, list[str]]:
    """Hard negatives from a model's ranks ``[lo, hi)``, never a judged document.

    ``sampling``: ``random`` draws ``per_query`` of the window by seed; ``top`` takes the best-ranked
    ones in it (sentence-transformers' ``mine_hard_negatives`` default).

    Written here rather than calling ``sentence_transformers.util.mine_hard_negatives`` because the
    trainer already holds the corpus vectors from the step-0 evaluation: reusing them saves a full
    corpus encoding (minutes on a CPU).
    """
    scored = mine_scored_negatives(
        query_vectors, query_ids, corpus_vectors, doc_ids, judged, rank_range, per_query, seed, sampling=sampling
    )
    return {qid: [doc for doc, _ in pairs] for qid, pairs in scored.items()}


def mine_scored_negatives(
    query_vectors: np.ndarray,
    query_ids: list[str],
    corpus_vectors: np.ndarray,
    doc_ids: list[str],
    judged: Mapping[str, Collection[str]],
    rank_range: tuple[int, int],
    per_query: int,
    seed: int,
    max_score: Mapping[str, float] | None = None,
    sampling: Literal["random", "top"] = "random",
) -> dict[str, list[tuple[str, float]]]:
    """:func:`mine_negatives` with each negative's score (inner product), and an optional ceiling per query.

    ``judged`` holds, per query, the documents never to return. A candidate scoring above
    ``max_score[qid]`` is left out before sampling (a likely false negative). Without a ceiling the
    picks are exactly :func:`mine_negatives`' for the same seed.
    """
    from app.retrieval.vector_index import VectorIndex

    lo, hi = rank_range
    hits = VectorIndex.build(corpus_vectors, doc_ids).search(query_vectors, hi)
    rng = random.Random(seed)
    mined: dict[str, list[tuple[str, float]]] = {}
    for qid, ranking in zip(query_ids, hits, strict=True):
        ceiling = max_score.get(qid) if max_score is not None else None
        pool = [(d, s) for d, s in ranking[lo:hi] if d not in judged.get(qid, {}) and (ceiling is None or s <= ceiling)]
        mined[qid] = pool[:per_query] if sampling == "top" else rng.sample(pool, min(per_query, len(pool)))
    return mined


def _sub_corpus(
    corpus: dict[str, Document],
    judged_sets: list[dict[str, dict[str, int]]],
    negatives: dict[str, list[str]],
    train_qrels: dict[str, dict[str, int]],
    spec: EvalSpec,
) -> dict[str, Document]:
    """Every judged document (and the dataset's own negatives) plus a seeded sample of the others.

    Deterministic for a seed, so two jobs with the same spec compare on the same documents. Scores
    on a sub-corpus are higher than on the full one (fewer distractors): the split label says so.
    """
    must = {d for qrels in judged_sets for docs in qrels.values() for d in docs if d in corpus}
    must |= {d for q in train_qrels for d in negatives.get(q, [])}
    rest = sorted(set(corpus) - must)
    room = max(0, (spec.max_corpus_docs or 0) - len(must))
    keep = must | set(random.Random(spec.seed).sample(rest, min(room, len(rest))))
    return {d: doc for d, doc in corpus.items() if d in keep}
