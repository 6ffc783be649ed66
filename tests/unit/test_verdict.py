"""The verdict: a paired bootstrap interval over test queries decides better / not_better / worse."""

from __future__ import annotations

import random

import pytest

from app.evaluation.verdict import judge


def per_query(values: list[float]) -> dict[str, dict[str, float]]:
    return {f"q{i}": {"ndcg@10": v} for i, v in enumerate(values)}


def test_no_gain_is_not_better():
    base = [random.Random(1).random() for _ in range(50)]
    verdict = judge(per_query(base), per_query(base), "ndcg@10")
    assert verdict.result == "not_better" and verdict.delta == 0.0 and verdict.ci_low == verdict.ci_high == 0.0


def test_a_gain_inside_the_noise_is_not_better_and_a_clear_one_is_better():
    rng = random.Random(2)
    base = [rng.random() for _ in range(60)]
    noisy = [b + rng.gauss(0.01, 0.3) for b in base]  # +0.01 on average, spread 0.3 per query
    clear = [b + 0.05 + rng.gauss(0, 0.01) for b in base]
    assert judge(per_query(base), per_query(noisy), "ndcg@10").result == "not_better"
    better = judge(per_query(base), per_query(clear), "ndcg@10")
    assert better.result == "better" and 0 < better.ci_low < better.delta < better.ci_high
    worse = judge(per_query(clear), per_query(base), "ndcg@10")
    assert worse.result == "worse" and worse.ci_high < 0


def test_the_interval_is_paired_and_reproducible():
    rng = random.Random(3)
    base = [rng.random() for _ in range(40)]
    final = [b + 0.02 for b in base]  # the same +0.02 on every query: no noise once paired
    verdict = judge(per_query(base), per_query(final), "ndcg@10")
    assert verdict.result == "better" and verdict.ci_low == pytest.approx(0.02)
    assert judge(per_query(base), per_query(final), "ndcg@10", seed=7) == verdict


def test_different_query_sets_are_refused():
    with pytest.raises(ValueError, match="different queries"):
        judge(per_query([0.1, 0.2]), per_query([0.1]), "ndcg@10")
