"""Score fusion: min-max normalisation, the interpolation's end points, and the fused two-stage run."""

from __future__ import annotations

import numpy as np
import pytest

from app.evaluation.metrics import evaluate_run
from app.evaluation.retrieval import FUSION_GRID, best_fusion_weight, fuse_runs
from app.retrieval.fusion import fuse, min_max


def test_min_max_maps_to_unit_range_and_flat_lists_to_zero():
    assert min_max(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert min_max(np.array([7.0, 7.0])).tolist() == [0.0, 0.0]
    assert min_max(np.array([])).size == 0


def test_fuse_end_points_are_the_two_stages():
    first = np.array([0.9, 0.8, 0.1])
    rerank = np.array([-3.0, 5.0, 1.0])
    assert np.argsort(-fuse(first, rerank, 0.0)).tolist() == [1, 2, 0]  # the reranker's order
    assert np.argsort(-fuse(first, rerank, 1.0)).tolist() == [0, 1, 2]  # the first stage's order
    # Halfway: doc 1 is good in both, doc 0 only in the first stage, doc 2 in neither.
    assert fuse(first, rerank, 0.5).tolist() == pytest.approx([0.5, 0.5 * 7 / 8 + 0.5, 0.25])


def test_fuse_rejects_bad_input():
    with pytest.raises(ValueError):
        fuse(np.array([1.0]), np.array([1.0]), 1.5)
    with pytest.raises(ValueError):
        fuse(np.array([1.0, 2.0]), np.array([1.0]), 0.5)


def test_fused_run_reorders_only_the_reranked_head():
    first_stage = {"q": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    reranked = {"q": {"a": -2.0, "b": 3.0, "c": 1.0}}  # the top 3 were reranked
    fused = fuse_runs(first_stage, reranked, rerank_k=3, first_stage_weight=0.25)["q"]
    assert sorted(fused, key=fused.get, reverse=True) == ["b", "c", "a", "d"]
    assert fused["d"] < min(fused[d] for d in "abc")  # the tail stays below the head


def test_a_flat_reranker_fused_keeps_the_first_stage_metrics():
    """A reranker with no spread (collapsed) adds nothing under fusion: the first stage's order is served."""
    first_stage = {"q1": {"a": 0.9, "b": 0.5, "c": 0.4}, "q2": {"x": 0.7, "y": 0.6, "z": 0.1}}
    flat = {"q1": dict.fromkeys("abc", -1.0), "q2": dict.fromkeys("xyz", -1.0)}
    qrels = {"q1": {"b": 1}, "q2": {"x": 2, "z": 1}}
    fused = fuse_runs(first_stage, flat, rerank_k=3, first_stage_weight=0.5)
    assert evaluate_run(qrels, fused) == evaluate_run(qrels, first_stage)


def _fused_ndcg(first_stage, reranked, qrels, weight: float) -> float:
    return evaluate_run(qrels, fuse_runs(first_stage, reranked, 3, weight))["ndcg@10"]


@pytest.mark.parametrize("reranker_is_right", [True, False])
def test_best_fusion_weight_takes_the_best_weight_nearest_the_default(reranker_is_right: bool):
    first_stage = {"q1": {"a": 0.9, "b": 0.8, "c": 0.1}, "q2": {"x": 0.9, "y": 0.2, "z": 0.1}}
    qrels = {"q1": {"b": 1}, "q2": {"x": 1}}  # the first stage is wrong on q1, right on q2
    if reranker_is_right:
        reranked = {"q1": {"a": 0.0, "b": 5.0, "c": -1.0}, "q2": {"x": 5.0, "y": 0.0, "z": -1.0}}
    else:
        reranked = {"q1": {"a": 5.0, "b": -1.0, "c": 0.0}, "q2": {"x": -1.0, "y": 5.0, "z": 0.0}}
    weight, metrics = best_fusion_weight(first_stage, reranked, qrels, rerank_k=3, metric="ndcg@10")

    by_weight = {w: _fused_ndcg(first_stage, reranked, qrels, w) for w in FUSION_GRID}
    best = max(by_weight.values())
    assert metrics["ndcg@10"] == best
    assert weight == min((w for w in FUSION_GRID if by_weight[w] == best), key=lambda w: abs(w - 0.5))
    if reranker_is_right:  # perfect order reachable, and the reranker alone (w = 0) has it
        assert best == 1.0 and by_weight[0.0] == 1.0 and weight > 0.0
    else:  # a reranker wrong everywhere adds nothing: the first stage's own figure is the best
        assert best == evaluate_run(qrels, first_stage)["ndcg@10"] < 1.0 and weight > 0.5
