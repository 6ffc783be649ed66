"""Turn a stored dataset into three disjoint query roles: train, validation and test.

- validation: every choice a job makes (best checkpoint, early stop, fusion weight, calibration) is
  made on these queries: a named split, or by default 10% of the training queries set aside by seed;
- test: the named ``split`` or a ``holdout_fraction``; reported, evaluated only for the base model and
  the chosen one, never used to choose anything.

The roles are disjoint by id and by normalised text (BEIR sets repeat texts under several ids): a
query whose text is in a later role is dropped from the earlier one (test > validation > train).
"""

from __future__ import annotations

import json
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
from app.retrieval.embedder import passage_text

VALIDATION_FRACTION = 0.1
MIN_VALIDATION_QUERIES = 20
TEST_ROLE, VALIDATION_ROLE = "test", "validation"
CONTAMINATED = ":contaminated"


@dataclass(frozen=True)
class EvalSpec:
    """Test: a named qrels split, or a fraction of the training queries set aside by seed. Validation: a
    named split, or ``validation_fraction`` of the remaining training queries (at least 20, at most half)."""

    split: str | None = None
    holdout_fraction: float | None = None
    seed: int = 42
    max_queries: int | None = None  # evaluate a seeded sample of the test queries
    max_corpus_docs: int | None = None  # judged docs + a seeded sample of the rest (cheap on CPU)
    validation_split: str | None = None
    validation_fraction: float = VALIDATION_FRACTION
    max_validation_queries: int | None = None  # a seeded sample of the validation queries
    # Set when the job was allowed to evaluate on queries its base or candidate model trained on.
    contaminated: bool = False

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
    """``eval_*`` is the test role (reported, never used to choose); ``validation_*`` is where choices are made.

    ``eval_label`` / ``validation_label`` describe where each role's queries came from; metrics are stored
    under the role names (:meth:`split`), so a reader always knows which role a figure belongs to.
    """

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
    validation_queries: dict[str, str] = field(default_factory=dict)
    validation_qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    validation_label: str = "none"
    contaminated: bool = False
    # FlagEmbedding lines' ``prompt``: the query instruction the file asks for ("" when it has none).
    query_prompt: str = ""
    # The teacher scores are a bi-encoder's cosines (a mine_negatives job wrote the file), not a reranker's.
    teacher_is_first_stage: bool = False

    def split(self, role: str, suffix: str = "") -> str:
        """The stored metric split of a role: ``test``, ``validation/fused``, ... (``:contaminated`` when flagged)."""
        return f"{role}{suffix}{CONTAMINATED if self.contaminated else ''}"

    @property
    def has_validation(self) -> bool:
        return bool(self.validation_qrels)

    @property
    def grades(self) -> list[int]:
        return sorted({g for docs in self.train_qrels.values() for g in docs.values()})


MINED_TEACHER = "first_stage_cosine"  # dataset.json "teacher_scores" of a mine_negatives job's file


def teacher_is_first_stage(dataset_dir: Path) -> bool:
    path = dataset_dir / "dataset.json"
    return path.exists() and json.loads(path.read_text()).get("teacher_scores") == MINED_TEACHER


def _read(dataset_dir: Path, dataset_format: str, train_split: str) -> tuple[RetrievalSet, dict, dict, str, str]:
    """The stored set, the file's own negatives and teacher scores by query, the split to train on, and
    the query instruction of a FlagEmbedding file's ``prompt`` fields ("" without them)."""
    prompt = ""
    if dataset_format == "training_jsonl":
        examples = read_training_examples(dataset_dir)
        rs = training_examples_to_retrieval_set(examples)
        negatives, teacher = _file_negatives_and_scores(examples, rs)
        prompt = _one_prompt(examples)
        train_split = "train"
    else:
        rs = read_retrieval_set(dataset_dir)
        negatives, teacher = {}, {}
    if train_split not in rs.qrels:
        raise ValueError(f"the dataset has no qrels split '{train_split}' (it has: {', '.join(sorted(rs.qrels))})")
    return rs, negatives, teacher, train_split, prompt


def _file_negatives_and_scores(
    examples: list, rs: RetrievalSet
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
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
    return negatives, teacher


def _one_prompt(examples: list) -> str:
    """FlagEmbedding's per-line ``prompt`` is the query instruction. A model serves one instruction, so a
    file must use one (or none): mixed prompts are refused rather than silently flattened."""
    prompts = {ex.prompt or "" for ex in examples}
    if len(prompts) > 1:
        shown = ", ".join(repr(p) for p in sorted(prompts)[:3])
        raise ValueError(
            f"the training file's lines carry {len(prompts)} different 'prompt' values ({shown}...); a model "
            "serves one query instruction: use the same prompt on every line (or none)"
        )
    return prompts.pop() if prompts else ""


def _normalised(text: str) -> str:
    return text.strip().lower()


def _sample(qrels: dict[str, dict[str, int]], limit: int | None, seed: int) -> dict[str, dict[str, int]]:
    if not limit or len(qrels) <= limit:
        return qrels
    kept = sorted(random.Random(seed).sample(sorted(qrels), limit))
    return {q: qrels[q] for q in kept}


def _without_texts(ids: list[str], queries: Mapping[str, str], texts: set[str]) -> list[str]:
    return [q for q in ids if _normalised(queries[q]) not in texts]


def _test_role(rs: RetrievalSet, spec: EvalSpec, train_split: str) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The test queries' qrels, and the training candidates left for validation and training."""
    candidates = rs.qrels[train_split]
    if spec.split:
        if spec.split not in rs.qrels:
            raise ValueError(f"the dataset has no qrels split '{spec.split}' (it has: {', '.join(sorted(rs.qrels))})")
        if spec.split == train_split:
            raise ValueError("the evaluation split must differ from the training split; use holdout_fraction")
        test_qrels = rs.qrels[spec.split]
        rest = [q for q in candidates if q not in test_qrels]
    else:
        rest, test_ids = holdout_split(candidates, spec.holdout_fraction or 0.2, spec.seed)
        test_qrels = {q: candidates[q] for q in test_ids}
    return _sample(test_qrels, spec.max_queries, spec.seed), rest


def _validation_role(
    rs: RetrievalSet, spec: EvalSpec, train_split: str, rest: list[str], taken: set[str]
) -> tuple[dict[str, dict[str, int]], list[str], str]:
    """Validation qrels (none of whose texts is in ``taken``), the training ids left, and a description."""
    if spec.validation_split:
        if spec.validation_split in {train_split, spec.split}:
            raise ValueError("the validation split must differ from the training and the test split")
        if spec.validation_split not in rs.qrels:
            raise ValueError(f"the dataset has no qrels split '{spec.validation_split}'")
        source = rs.qrels[spec.validation_split]
        ids = _without_texts([q for q in source if q not in rs.qrels.get(spec.split or "", {})], rs.queries, taken)
        validation = {q: source[q] for q in ids}
        rest = [q for q in rest if q not in validation]
        label = spec.validation_split
    else:
        usable = sorted(_without_texts([q for q in rest if _has_relevant(rs.qrels[train_split][q])], rs.queries, taken))
        wanted = max(MIN_VALIDATION_QUERIES, round(len(usable) * spec.validation_fraction))
        n = min(wanted, len(usable) // 2)  # never more than half of what could be trained on
        random.Random(f"{spec.seed}-validation").shuffle(usable)
        validation = {q: rs.qrels[train_split][q] for q in sorted(usable[:n])}
        rest = [q for q in rest if q not in validation]
        label = f"{len(validation)} of the training queries (seed {spec.seed})"
    return _sample(validation, spec.max_validation_queries, spec.seed), rest, label


def _has_relevant(judged: Mapping[str, int]) -> bool:
    return any(g > 0 for g in judged.values())


def prepare(
    dataset_dir: Path,
    dataset_format: str,
    spec: EvalSpec,
    train_split: str = "train",
    max_train_queries: int | None = None,
) -> PreparedData:
    rs, negatives, teacher, train_split, prompt = _read(dataset_dir, dataset_format, train_split)
    test_qrels, rest = _test_role(rs, spec, train_split)
    test_texts = {_normalised(rs.queries[q]) for q in test_qrels}
    validation_qrels, rest, validation_label = _validation_role(rs, spec, train_split, rest, test_texts)
    held_texts = test_texts | {_normalised(rs.queries[q]) for q in validation_qrels}
    candidates = rs.qrels[train_split]
    train_ids = _without_texts(rest, rs.queries, held_texts)
    train_qrels = _sample({q: candidates[q] for q in train_ids if _has_relevant(candidates[q])}, max_train_queries,
                          spec.seed)  # fmt: skip
    if not train_qrels:
        raise ValueError("no training query with a relevant document is left after holding out the evaluation split")
    if not validation_qrels:
        raise ValueError(
            "no validation query is left: at least two training queries with a relevant document are needed "
            "(one is set aside to choose the checkpoint), or name a 'validation_split'"
        )
    corpus = rs.corpus
    if spec.max_corpus_docs and len(corpus) > spec.max_corpus_docs:
        corpus = _sub_corpus(corpus, [test_qrels, validation_qrels, train_qrels], negatives, train_qrels, spec)
    return PreparedData(
        corpus=corpus,
        train_queries={q: rs.queries[q] for q in train_qrels},
        train_qrels=train_qrels,
        eval_queries={q: rs.queries[q] for q in test_qrels},
        eval_qrels={q: dict(d) for q, d in test_qrels.items()},
        eval_label=spec.label,
        dataset_negatives={q: n for q, n in negatives.items() if q in train_qrels and n},
        teacher_scores={q: t for q, t in teacher.items() if q in train_qrels and t},
        validation_queries={q: rs.queries[q] for q in validation_qrels},
        validation_qrels={q: dict(d) for q, d in validation_qrels.items()},
        validation_label=validation_label,
        contaminated=spec.contaminated,
        query_prompt=prompt,
        teacher_is_first_stage=teacher_is_first_stage(dataset_dir),
    )


def read_training_split(dataset_dir: Path, dataset_format: str, train_split: str = "train") -> PreparedData:
    """Every query of the training split that has a relevant document, and the whole corpus; nothing held out.

    For operations that train nothing and evaluate nothing (negative mining), so :func:`prepare`'s
    hold-out would only lose queries. The eval fields are empty.
    """
    rs, negatives, teacher, train_split, prompt = _read(dataset_dir, dataset_format, train_split)
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
        query_prompt=prompt,
        teacher_is_first_stage=teacher_is_first_stage(dataset_dir),
    )


def judged_and_copies(data: PreparedData) -> dict[str, set[str]]:
    """Per training query, the documents never to use as its negatives: its judged ones and every document
    with the same text (BEIR corpora repeat texts under several ids; a copy of the positive as its hard
    negative teaches the model to push the positive away)."""
    ids_of_text: dict[str, list[str]] = {}
    for doc_id, doc in data.corpus.items():
        ids_of_text.setdefault(passage_text(doc).strip().lower(), []).append(doc_id)
    excluded: dict[str, set[str]] = {}
    for qid, judged in data.train_qrels.items():
        excluded[qid] = set(judged)
        for doc_id in judged:
            if doc_id in data.corpus:
                excluded[qid].update(ids_of_text[passage_text(data.corpus[doc_id]).strip().lower()])
    return excluded


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
