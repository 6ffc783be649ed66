"""Held-out splits, dataset preparation (no evaluation query is ever trained on) and negative mining."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from app.evaluation.splits import holdout_split
from app.ingest import Document, RetrievalSet, TrainingExample, write_retrieval_set, write_training_examples
from app.training.data import EvalSpec, mine_negatives, prepare


def norm_text(text: str) -> str:
    return text.strip().lower()


# ---------------------------------------------------------------- holdout_split


IDS = [f"q{i:03d}" for i in range(40)]


def test_holdout_split_is_deterministic_for_a_seed():
    first = holdout_split(IDS, 0.25, seed=11)
    assert holdout_split(IDS, 0.25, seed=11) == first
    # Input order and duplicates do not matter.
    shuffled = IDS[::-1] + IDS[:5]
    random.Random(0).shuffle(shuffled)
    assert holdout_split(shuffled, 0.25, seed=11) == first


def test_holdout_split_changes_with_the_seed():
    held = {tuple(holdout_split(IDS, 0.25, seed=s)[1]) for s in range(6)}
    # C(40, 10) possible splits: six seeds giving one split would mean the seed is ignored.
    assert len(held) > 1
    assert holdout_split(IDS, 0.25, seed=1) != holdout_split(IDS, 0.25, seed=2)


@pytest.mark.parametrize("n", [2, 3, 7, 40, 101])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.2, 0.5, 0.9, 0.99])
def test_holdout_split_partitions_and_respects_fraction(n, fraction):
    ids = [f"id{i}" for i in range(n)]
    train, held = holdout_split(ids, fraction, seed=3)
    assert set(train).isdisjoint(held)
    assert sorted(train + held) == sorted(ids)
    assert len(train) >= 1 and len(held) >= 1
    target = n * fraction
    if 1 <= target <= n - 1:
        assert abs(len(held) - target) <= 0.5 + 1e-9
    elif target < 1:
        assert len(held) == 1
    else:
        assert len(held) == n - 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_holdout_split_rejects_invalid_fraction(fraction):
    with pytest.raises(ValueError):
        holdout_split(IDS, fraction, seed=0)


def test_holdout_split_needs_two_queries():
    with pytest.raises(ValueError):
        holdout_split(["only", "only"], 0.5, seed=0)


# ---------------------------------------------------------------- prepare (BEIR)


def docs(*ids: str) -> dict[str, Document]:
    return {d: Document(id=d, title=f"title {d}", text=f"text of {d}") for d in ids}


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    rs = RetrievalSet(
        corpus=docs("d1", "d2", "d3", "d4", "d5", "d6"),
        queries={
            "t1": "What is TF-IDF?",
            "t2": "dense retrieval",
            "t3": "  WHAT is bm25?\t",  # same text as test query e1 up to case and surrounding whitespace
            "t4": "only judged non-relevant",
            "e1": "what is BM25?",
            "e2": "cross encoders",
        },
        qrels={
            "train": {
                "t1": {"d1": 2, "d6": 0},
                "t2": {"d2": 1},
                "t3": {"d3": 1},
                "t4": {"d5": 0},
                "e2": {"d4": 1},  # a test query id in the training qrels: must not be trained on
            },
            "test": {"e1": {"d1": 1}, "e2": {"d4": 2, "d2": 0}},
        },
    )
    write_retrieval_set(rs, tmp_path / "beir")
    return tmp_path / "beir"


def test_prepare_with_named_split_never_trains_on_eval_queries(beir_dir: Path):
    data = prepare(beir_dir, "beir", EvalSpec(split="test"))
    assert data.eval_label == "test"
    assert data.eval_qrels == {"e1": {"d1": 1}, "e2": {"d4": 2, "d2": 0}}
    assert data.eval_queries == {"e1": "what is BM25?", "e2": "cross encoders"}

    # By id: e2 is in both splits, so it is not trained on.
    assert set(data.train_qrels).isdisjoint(data.eval_qrels)
    # By text: t3 differs from e1 only in case and surrounding whitespace.
    assert "t3" not in data.train_qrels
    eval_texts = {norm_text(t) for t in data.eval_queries.values()}
    assert all(norm_text(t) not in eval_texts for t in data.train_queries.values())
    # t4 has no relevant document, so it cannot be a training query.
    assert "t4" not in data.train_qrels

    # The training candidates are split between training and validation (here one each), disjoint.
    assert len(data.validation_qrels) == 1 and set(data.train_qrels).isdisjoint(data.validation_qrels)
    assert data.train_qrels | data.validation_qrels == {"t1": {"d1": 2, "d6": 0}, "t2": {"d2": 1}}
    assert data.train_queries | data.validation_queries == {"t1": "What is TF-IDF?", "t2": "dense retrieval"}
    assert set(data.corpus) == {"d1", "d2", "d3", "d4", "d5", "d6"}
    assert data.corpus["d3"] == Document(id="d3", title="title d3", text="text of d3")
    assert data.grades == sorted({g for judged in data.train_qrels.values() for g in judged.values()})
    assert data.dataset_negatives == {}


def test_prepare_split_errors(beir_dir: Path):
    with pytest.raises(ValueError, match="dev"):
        prepare(beir_dir, "beir", EvalSpec(split="dev"))
    with pytest.raises(ValueError, match="nope"):
        prepare(beir_dir, "beir", EvalSpec(split="test"), train_split="nope")
    with pytest.raises(ValueError):
        prepare(beir_dir, "beir", EvalSpec(split="train"))


MANY_QUERIES = {f"q{i:02d}": f"Query number {i}" for i in range(18)} | {
    # Two queries whose texts repeat others up to case and surrounding whitespace.
    "q18": "  QUERY NUMBER 3 ",
    "q19": "query number 7",
}


@pytest.fixture
def beir_many(tmp_path: Path) -> Path:
    rs = RetrievalSet(
        corpus=docs(*(f"d{i:02d}" for i in range(20))),
        queries=MANY_QUERIES,
        qrels={"train": {q: {f"d{i:02d}": 1} for i, q in enumerate(MANY_QUERIES)}},
    )
    write_retrieval_set(rs, tmp_path / "many")
    return tmp_path / "many"


def test_prepare_with_holdout_fraction(beir_many: Path):
    spec = EvalSpec(holdout_fraction=0.3, seed=5)
    data = prepare(beir_many, "beir", spec)
    again = prepare(beir_many, "beir", spec)

    assert data.eval_qrels == again.eval_qrels
    assert data.train_qrels == again.train_qrels
    assert set(data.train_qrels).isdisjoint(data.eval_qrels)
    assert len(data.eval_qrels) == round(20 * 0.3)
    assert data.eval_label == spec.label
    assert "0.3" in spec.label and "5" in spec.label

    # The held-out ids are those of holdout_split on the training split.
    _, held = holdout_split(MANY_QUERIES, 0.3, 5)
    assert sorted(data.eval_qrels) == held
    assert data.eval_queries == {q: MANY_QUERIES[q] for q in held}
    # Every other query is trained on unless its text repeats a held-out one.
    eval_texts = {norm_text(MANY_QUERIES[q]) for q in held}
    expected_train = {q for q in MANY_QUERIES if q not in held and norm_text(MANY_QUERIES[q]) not in eval_texts}
    # ... and a training query whose text repeats a validation query's is dropped too.
    validation_texts = {norm_text(MANY_QUERIES[q]) for q in data.validation_qrels}
    expected_train = {
        q for q in expected_train if q in data.validation_qrels or norm_text(MANY_QUERIES[q]) not in validation_texts
    }
    assert set(data.train_qrels) | set(data.validation_qrels) == expected_train
    assert set(data.train_qrels).isdisjoint(data.validation_qrels)


def test_prepare_holdout_drops_text_duplicates_of_heldout_queries(beir_many: Path):
    """Find seeds where exactly one of a duplicated pair is held out: the other must not be trained on."""
    pairs = [("q03", "q18"), ("q07", "q19")]
    checked = 0
    for seed in range(40):
        data = prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25, seed=seed))
        for a, b in pairs:
            for held, other in ((a, b), (b, a)):
                if held in data.eval_qrels and other not in data.eval_qrels:
                    assert other not in data.train_qrels, (seed, held, other)
                    checked += 1
    assert checked > 0


def test_prepare_holdout_never_shares_a_text_across_sides(beir_many: Path):
    splits = set()
    for seed in range(12):
        data = prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25, seed=seed))
        eval_texts = {norm_text(t) for t in data.eval_queries.values()}
        assert all(norm_text(t) not in eval_texts for t in data.train_queries.values()), seed
        assert set(data.train_qrels).isdisjoint(data.eval_qrels)
        splits.add(tuple(sorted(data.eval_qrels)))
    assert len(splits) > 1


# ---------------------------------------------------------------- prepare (training JSONL)


@pytest.fixture
def jsonl_dir(tmp_path: Path) -> Path:
    examples = [
        TrainingExample(query=f"question {i}", pos=[f"answer {i}"], neg=[f"wrong {i}a", f"wrong {i}b"])
        for i in range(8)
    ]
    # A repeated query: merged, negatives unioned without duplicates, in first-seen order.
    examples.append(TrainingExample(query="question 0", pos=["answer 0 again"], neg=["wrong 0b", "wrong 0c"]))
    # A query without negatives.
    examples.append(TrainingExample(query="no negatives", pos=["lonely answer"], neg=[]))
    write_training_examples(examples, tmp_path / "jsonl")
    return tmp_path / "jsonl"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_prepare_training_jsonl_negatives(jsonl_dir: Path, seed: int):
    data = prepare(jsonl_dir, "training_jsonl", EvalSpec(holdout_fraction=0.25, seed=seed))
    text_of = {did: doc.text for did, doc in data.corpus.items()}
    assert set(data.train_qrels).isdisjoint(data.eval_qrels)
    assert len(data.train_qrels) + len(data.validation_qrels) + len(data.eval_qrels) == 9  # "question 0": one query
    assert data.dataset_negatives, "some training query must keep its negatives"
    assert set(data.dataset_negatives) <= set(data.train_qrels)

    for qid, negatives in data.dataset_negatives.items():
        assert len(negatives) == len(set(negatives))
        for did in negatives:
            assert did in data.corpus
            assert data.train_qrels[qid].get(did, 0) <= 0
    for qid, query in data.train_queries.items():
        negatives = [text_of[d] for d in data.dataset_negatives.get(qid, [])]
        positives = {text_of[d] for d, g in data.train_qrels[qid].items() if g > 0}
        if query == "question 0":
            assert negatives == ["wrong 0a", "wrong 0b", "wrong 0c"]
            assert positives == {"answer 0", "answer 0 again"}
        elif query == "no negatives":
            assert negatives == []
            assert positives == {"lonely answer"}
        else:
            i = query.split()[-1]
            assert negatives == [f"wrong {i}a", f"wrong {i}b"]
            assert positives == {f"answer {i}"}


def test_prepare_training_jsonl_has_only_a_train_split(jsonl_dir: Path):
    with pytest.raises(ValueError, match="test"):
        prepare(jsonl_dir, "training_jsonl", EvalSpec(split="test"))


def test_prepare_training_jsonl_drops_negatives_that_are_positives(tmp_path: Path):
    examples = [TrainingExample(query=f"question {i}", pos=[f"answer {i}"], neg=[f"wrong {i}"]) for i in range(6)]
    # The same query on a second line lists the first line's negative as a positive, and vice versa.
    examples += [TrainingExample(query=f"question {i}", pos=[f"wrong {i}"], neg=[f"answer {i}"]) for i in range(6)]
    write_training_examples(examples, tmp_path / "conflict")
    data = prepare(tmp_path / "conflict", "training_jsonl", EvalSpec(holdout_fraction=0.2, seed=0))
    for qid, negatives in data.dataset_negatives.items():
        assert all(data.train_qrels[qid].get(d, 0) <= 0 for d in negatives)


# ---------------------------------------------------------------- mine_negatives


def circle(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


@pytest.fixture
def toy_vectors():
    # Docs on the unit circle at well separated angles; similarity to a query = cos(angle difference).
    doc_angles = np.arange(40) * 0.07
    query_angles = np.array([0.0123, 1.0061, 2.2031])
    doc_ids = [f"doc{i:02d}" for i in range(40)]
    query_ids = ["qa", "qb", "qc"]
    return circle(query_angles), query_ids, circle(doc_angles), doc_ids


def numpy_ranking(query_vec: np.ndarray, corpus: np.ndarray, doc_ids: list[str]) -> list[str]:
    scores = corpus.astype(np.float64) @ query_vec.astype(np.float64)
    return [doc_ids[i] for i in np.argsort(-scores, kind="stable")]


def test_mine_negatives_rank_range_and_judged(toy_vectors):
    qv, qids, cv, dids = toy_vectors
    lo, hi, per_query = 3, 12, 4
    rankings = {q: numpy_ranking(qv[i], cv, dids) for i, q in enumerate(qids)}
    # Judge documents inside the window (positives and a judged non-relevant one) and the top one.
    judged = {
        "qa": {rankings["qa"][0]: 1, rankings["qa"][3]: 1, rankings["qa"][5]: 0},
        "qb": {rankings["qb"][4]: 2, rankings["qb"][6]: 1, rankings["qb"][7]: 1, rankings["qb"][11]: 1},
    }
    mined = mine_negatives(qv, qids, cv, dids, judged, (lo, hi), per_query, seed=9)
    assert set(mined) == set(qids)
    for q in qids:
        window = rankings[q][lo:hi]
        pool = [d for d in window if d not in judged.get(q, {})]
        got = mined[q]
        assert len(got) == min(per_query, len(pool))
        assert len(set(got)) == len(got)
        assert set(got) <= set(pool)
        assert not set(got) & set(judged.get(q, {}))
    assert mined == mine_negatives(qv, qids, cv, dids, judged, (lo, hi), per_query, seed=9)


def test_mine_negatives_small_pool_returns_all(toy_vectors):
    qv, qids, cv, dids = toy_vectors
    ranking = numpy_ranking(qv[0], cv, dids)
    judged = {"qa": {ranking[1]: 1}}
    mined = mine_negatives(qv[:1], qids[:1], cv, dids, judged, (0, 4), per_query=10, seed=0)
    assert sorted(mined["qa"]) == sorted([ranking[0], ranking[2], ranking[3]])


def test_mine_negatives_window_beyond_corpus(toy_vectors):
    qv, qids, cv, dids = toy_vectors
    mined = mine_negatives(qv, qids, cv, dids, {}, (38, 100), per_query=5, seed=0)
    for i, q in enumerate(qids):
        assert sorted(mined[q]) == sorted(numpy_ranking(qv[i], cv, dids)[38:])


def test_toy_vectors_are_well_separated(toy_vectors):
    """Guard for the tests above: no near ties, so FAISS and numpy must agree on the order."""
    qv, _, cv, _ = toy_vectors
    for q in qv:
        scores = np.sort(cv.astype(np.float64) @ q.astype(np.float64))
        assert np.min(np.diff(scores)) > 1e-5
    assert math.isclose(float(np.linalg.norm(cv[5])), 1.0, rel_tol=1e-6)


def test_prepare_training_jsonl_without_negatives_leaves_mining_to_the_trainer(tmp_path: Path) -> None:
    """Queries whose lines carry no negatives must not appear in dataset_negatives ("auto" then mines)."""
    examples = [TrainingExample(query=f"query {i}", pos=[f"passage {i}"], neg=[]) for i in range(6)]
    examples.append(TrainingExample(query="query 6", pos=["passage 6"], neg=["passage 0"]))
    write_training_examples(examples, tmp_path)
    data = prepare(tmp_path, "training_jsonl", EvalSpec(holdout_fraction=0.2, seed=1))
    with_negatives = {q for q, text in data.train_queries.items() if text == "query 6"}
    assert set(data.dataset_negatives) == with_negatives
    assert all(data.dataset_negatives.values())


def test_eval_sampling_keeps_judged_docs_and_is_deterministic(tmp_path: Path) -> None:
    corpus = {f"d{i}": Document(id=f"d{i}", title="", text=f"doc {i}") for i in range(100)}
    queries = {f"q{i}": f"query {i}" for i in range(30)}
    qrels = {
        "train": {f"q{i}": {f"d{i}": 1} for i in range(20)},
        "test": {f"q{i}": {f"d{i}": 1, f"d{i + 50}": 0} for i in range(20, 30)},
    }
    write_retrieval_set(RetrievalSet(corpus=corpus, queries=queries, qrels=qrels), tmp_path)
    spec = EvalSpec(split="test", max_queries=4, max_corpus_docs=40, seed=3)
    data = prepare(tmp_path, "beir", spec, max_train_queries=7)
    again = prepare(tmp_path, "beir", spec, max_train_queries=7)

    assert len(data.eval_qrels) == 4 and set(data.eval_qrels) <= set(qrels["test"])
    assert len(data.train_qrels) == 7 and set(data.train_qrels) <= set(qrels["train"])
    assert len(data.corpus) == 40
    judged = {d for docs in (*data.eval_qrels.values(), *data.train_qrels.values()) for d in docs}
    assert judged <= set(data.corpus)
    assert (data.eval_qrels, data.train_qrels, list(data.corpus)) == (
        again.eval_qrels,
        again.train_qrels,
        list(again.corpus),
    )
    assert data.eval_label == "test/q4/corpus40"


def test_three_roles_are_disjoint_by_id_and_text(beir_many: Path):
    """Validation is carved from the training queries (10%, at least 20, at most half); no text is in two roles."""
    for seed in range(8):
        data = prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25, seed=seed))
        roles = [data.train_queries, data.validation_queries, data.eval_queries]
        assert all(roles), seed
        for i, a in enumerate(roles):
            for b in roles[i + 1 :]:
                assert set(a).isdisjoint(b)
                assert {norm_text(t) for t in a.values()}.isdisjoint(norm_text(t) for t in b.values()), seed
        # Half of what was left for training at most (here 20 - 5 held out, less text duplicates).
        assert len(data.validation_qrels) <= (len(data.validation_qrels) + len(data.train_qrels) + 1) // 2
    again = prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25, seed=3))
    assert (
        again.validation_qrels == prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25, seed=3)).validation_qrels
    )


def test_a_named_validation_split_is_used_and_kept_apart(tmp_path: Path):
    queries = {f"q{i}": f"question {i}" for i in range(12)}
    rs = RetrievalSet(
        corpus=docs(*(f"d{i}" for i in range(12))),
        queries=queries,
        qrels={
            "train": {f"q{i}": {f"d{i}": 1} for i in range(8)},
            "dev": {f"q{i}": {f"d{i}": 1} for i in (7, 8, 9)},  # q7 is also a training query: validation wins
            "test": {f"q{i}": {f"d{i}": 1} for i in (10, 11)},
        },
    )
    write_retrieval_set(rs, tmp_path / "b")
    data = prepare(tmp_path / "b", "beir", EvalSpec(split="test", validation_split="dev"))
    assert sorted(data.validation_qrels) == ["q7", "q8", "q9"] and data.validation_label == "dev"
    assert sorted(data.train_qrels) == [f"q{i}" for i in range(7)]
    with pytest.raises(ValueError, match="validation split"):
        prepare(tmp_path / "b", "beir", EvalSpec(split="test", validation_split="test"))


def test_a_file_with_one_prompt_gives_the_query_instruction_and_mixed_prompts_are_refused(tmp_path: Path):
    same = [TrainingExample(query=f"q {i}", pos=[f"a {i}"], neg=[], prompt="Represent: ") for i in range(6)]
    write_training_examples(same, tmp_path / "same")
    assert prepare(tmp_path / "same", "training_jsonl", EvalSpec(holdout_fraction=0.2)).query_prompt == "Represent: "
    mixed = [*same, TrainingExample(query="other", pos=["x"], neg=[], prompt="Query: ")]
    write_training_examples(mixed, tmp_path / "mixed")
    with pytest.raises(ValueError, match="2 different 'prompt' values"):
        prepare(tmp_path / "mixed", "training_jsonl", EvalSpec(holdout_fraction=0.2))


def test_a_contaminated_evaluation_labels_every_split(beir_many: Path):
    clean = prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25))
    flagged = prepare(beir_many, "beir", EvalSpec(holdout_fraction=0.25, contaminated=True))
    assert clean.split("test") == "test" and clean.split("validation", "/fused") == "validation/fused"
    assert flagged.split("test") == "test:contaminated"
    assert flagged.split("validation", "/fused") == "validation/fused:contaminated"
