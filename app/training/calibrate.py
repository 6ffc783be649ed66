"""The end of a job: fit the served score's calibration on validation, report it on test.

The fit reads the chosen model's validation runs (never the test queries); the report scores the
test queries' top 10 as search serves them, calibrated and, side by side, uncalibrated (the cosine,
or sigmoid of the logit), so a job's figures show what the calibration bought.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from app.evaluation.calibration import (
    Calibration,
    calibration_report,
    fit_embedder_calibration,
    fit_reranker_calibration,
    served_embedder_scores,
    served_reranker_scores,
)
from app.training.observer import TrainingObserver

Run = Mapping[str, Mapping[str, float]]
SERVED_TOP_N = 10  # what ECE and the threshold figures are measured over: the results search returns


def calibrate_embedder(
    model_dir: Path, validation_run: Run, validation_qrels: Run, min_grade: int
) -> Calibration | None:
    fitted = fit_embedder_calibration(validation_run, validation_qrels, SERVED_TOP_N, min_grade)
    fitted.save(model_dir)
    return fitted or None


def calibrate_reranker(
    model_dir: Path,
    first_stage_run: Run,
    reranked_run: Run,
    validation_qrels: Run,
    rerank_k: int,
    min_grade: int,
    first_stage_model: str | None,
) -> Calibration | None:
    fitted = fit_reranker_calibration(first_stage_run, reranked_run, validation_qrels, rerank_k, SERVED_TOP_N,
                                      min_grade, first_stage_model)  # fmt: skip
    fitted.save(model_dir)
    return fitted or None


def report_embedder(observer: TrainingObserver, step: int, split: str, test_run: Run, qrels: Run,
                    calibration: Calibration | None, min_grade: int) -> None:  # fmt: skip
    for suffix, used in (("/calibrated", calibration), ("/uncalibrated", None)):
        if suffix == "/calibrated" and used is None:
            continue
        served = served_embedder_scores(test_run, SERVED_TOP_N, used)
        _record(observer, step, f"{split}{suffix}", calibration_report(served, qrels, min_grade).metrics())


def report_reranker(observer: TrainingObserver, step: int, split: str, first_stage_run: Run, reranked_run: Run,
                    qrels: Run, rerank_k: int, calibration: Calibration | None, first_stage_model: str | None,
                    weight: float, min_grade: int) -> None:  # fmt: skip
    for suffix, used in (("/calibrated", calibration), ("/uncalibrated", None)):
        if suffix == "/calibrated" and used is None:
            continue
        served = served_reranker_scores(first_stage_run, reranked_run, rerank_k, SERVED_TOP_N, used,
                                        first_stage_model, weight)  # fmt: skip
        _record(observer, step, f"{split}{suffix}", calibration_report(served, qrels, min_grade).metrics())


def calibrated_order(first_stage_run: Run, reranked_run: Run, rerank_k: int, calibration: Calibration,
                     first_stage_model: str | None) -> dict[str, dict[str, float]]:  # fmt: skip
    """The run search serves with a calibration: the top ``rerank_k`` by P(relevant), the rest below."""
    head = served_reranker_scores(first_stage_run, reranked_run, rerank_k, rerank_k, calibration, first_stage_model)
    run: dict[str, dict[str, float]] = {}
    for qid, ranking in first_stage_run.items():
        run[qid] = dict(head.get(qid, {}))
        tail = sorted((d for d in ranking if d not in run[qid]), key=lambda d: -ranking[d])
        for rank, doc in enumerate(tail):
            run[qid][doc] = -1.0 - rank  # probabilities lie in 0..1
    return run


def _record(observer: TrainingObserver, step: int, split: str, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        observer.on_metric(step, 0.0, name, value, split)
