"""A real (tiny) embedder run: choices on validation, test touched twice, the base measured as it is used."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.evaluation.retrieval import CorpusVectors, KnownVectors, encode_corpus, evaluate_embedder
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.services.models import bundled_model_path
from app.training.data import EvalSpec, prepare
from app.training.embedder import train_embedder
from app.training.params import EmbedderParams
from tests.conftest import scifact_slice_zip
from tests.unit.observers import RecordingObserver

PROMPT = "Represent this scientific claim for finding the abstracts that support or refute it: "


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slice")
    zipfile.ZipFile(io.BytesIO(scifact_slice_zip(n_train=30, n_test=12, n_distractors=40))).extractall(root)
    return root / "scifact-slice"


@pytest.fixture(scope="module")
def base_with_prompt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model saved with a query prompt: a base whose saved configuration differs from the job's."""
    model = load_embedder(bundled_model_path(), "cpu")
    model.prompts = {"query": PROMPT, "document": ""}
    path = tmp_path_factory.mktemp("base") / "prompted"
    model.save(str(path))
    return path


def test_a_short_job_chooses_on_validation_and_touches_test_twice(scifact_slice, base_with_prompt, tmp_path):
    data = prepare(scifact_slice, "beir", EvalSpec(split="test"))
    assert data.validation_qrels and set(data.validation_qrels).isdisjoint(data.train_qrels)
    params = EmbedderParams(max_steps=3, batch_size=4, passage_max_len=64, logging_steps=5, seed=1)
    observer = RecordingObserver()
    outcome = train_embedder(str(base_with_prompt), data, params, tmp_path, observer, "cpu")

    steps_of = lambda split: sorted({s for s, n, _, sp in observer.metrics if sp == split and n == "ndcg@10"})  # noqa: E731
    assert steps_of("validation") == [0, 3]
    assert steps_of("test") == [0, outcome.best_step]  # the base, and the chosen model: exactly twice
    assert outcome.best_step in (3,) and outcome.verdict is not None
    assert outcome.verdict.queries == len(data.eval_qrels) and outcome.verdict.split == "test"
    assert outcome.better_than_base == (outcome.verdict.result == "better")
    # The calibration was fitted (or its reason written) in the model's folder; test reports the served top 10.
    assert (outcome.model_dir / "calibration.json").exists()
    served = {n for s, n, _, sp in observer.metrics if sp == "test/uncalibrated" and s == outcome.best_step}
    assert "ece" in served and "recall@t0.5" in served
    # Loss at the last step although logging_steps (5) is longer than the job (3 steps).
    assert 3 in observer.train("loss")

    # Step 0 measured the base with its saved prompt (the job's params have none), and said so.
    assert any("query_instruction" in m and "from step 1" in m for m in observer.messages)
    base = load_embedder(str(base_with_prompt), "cpu")
    as_used = evaluate_embedder(base, EmbedderConfig(query_instruction=PROMPT, max_seq_length=256), data.corpus,
                                data.validation_queries, data.validation_qrels)  # fmt: skip
    step0 = {n: v for s, n, v, sp in observer.metrics if s == 0 and sp == "validation"}
    assert step0["ndcg@10"] == pytest.approx(as_used.metrics["ndcg@10"], abs=1e-9)
    assert outcome.config["query_instruction"] == ""  # the job trains and serves its own configuration


def test_a_job_that_changes_nothing_is_not_better(scifact_slice, tmp_path):
    """A learning rate too small to move any weight: the chosen model ranks as the base does."""
    data = prepare(scifact_slice, "beir", EvalSpec(split="test"))
    # The base's own lengths (256): a shorter passage_max_len alone would change what is measured.
    params = EmbedderParams(max_steps=1, batch_size=4, learning_rate=1e-12, seed=1)
    outcome = train_embedder(bundled_model_path(), data, params, tmp_path, RecordingObserver(), "cpu")
    assert outcome.verdict is not None and outcome.verdict.result == "not_better"
    assert outcome.verdict.delta == pytest.approx(0.0, abs=1e-9) and not outcome.better_than_base


def test_step_0_reads_the_vectors_an_index_of_the_base_holds(scifact_slice, tmp_path):
    """An index of the base model over the dataset (its rows in another order, with a passage more) stands in
    for step 0's corpus encoding; a set that lacks one of the job's passages is not used."""
    data = prepare(scifact_slice, "beir", EvalSpec(split="test"))
    base = load_embedder(bundled_model_path(), "cpu")
    config = EmbedderConfig(max_seq_length=256)
    ids = list(reversed(data.corpus))
    rows = encode_corpus(base, config, {d: data.corpus[d] for d in ids})
    extra = CorpusVectors(np.vstack([rows.vectors, rows.vectors[:1]]), [*ids, "not-in-this-job"])
    params = EmbedderParams(max_steps=1, batch_size=4, learning_rate=1e-12, seed=1)
    expected = evaluate_embedder(base, config, data.corpus, data.validation_queries, data.validation_qrels).metrics

    observer = RecordingObserver()
    train_embedder(bundled_model_path(), data, params, tmp_path / "a", observer, "cpu",
                   known_vectors=lambda: KnownVectors(extra, "index i1"))  # fmt: skip
    assert any(m.startswith(f"step 0: reused the vectors of index i1 ({len(ids)} passages)") for m in observer.messages)
    assert not any("encoding" in m and m.startswith("step 0") for m in observer.messages), observer.messages
    step0 = {n: v for s, n, v, sp in observer.metrics if s == 0 and sp == "validation"}
    assert step0["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)

    lacking = CorpusVectors(rows.vectors[1:], ids[1:])
    observer = RecordingObserver()
    train_embedder(bundled_model_path(), data, params, tmp_path / "b", observer, "cpu",
                   known_vectors=lambda: KnownVectors(lacking, "index i2"))  # fmt: skip
    assert any("index i2 lacks some of this job's passages" in m for m in observer.messages)
    assert any(m.startswith(f"step 0: evaluating the base model (encoding {len(ids)}") for m in observer.messages)
