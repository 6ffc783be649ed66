"""evaluate_run against metrics computed by hand from their textbook definitions.

trec_eval's nDCG uses linear gains (gain = grade) and a log2(rank + 1) discount; the ideal ranking is
built from every judged document of the query, retrieved or not. MRR@10 is 1 / rank of the first
relevant document within the top 10, else 0. Recall@100 is relevant-retrieved-in-top-100 / relevant.
"""

from __future__ import annotations

import math

import pytest

from app.evaluation.metrics import HEADLINE_METRICS, evaluate_run, paired_change, per_query_metrics

TOL = 1e-9


def dcg(gains: list[float]) -> float:
    """DCG over a ranked gain list (position 0 is rank 1)."""
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def ndcg_at(ranked_docs: list[str], qrels: dict[str, int], k: int) -> float:
    gains = [max(qrels.get(d, 0), 0) for d in ranked_docs[:k]]
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    return dcg(gains) / dcg(ideal)


def run_from_ranking(ranked_docs: list[str]) -> dict[str, float]:
    """Strictly decreasing scores so there are no ties to break."""
    n = len(ranked_docs)
    return {doc: float(n - i) for i, doc in enumerate(ranked_docs)}


def decoys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-decoy-{i:03d}" for i in range(n)]


@pytest.fixture
def toy() -> tuple[dict, dict, dict[str, float]]:
    qrels = {
        # graded: dA grade 2, dB and dD grade 1 (dD never retrieved), dC judged non-relevant
        "q1": {"dA": 2, "dB": 1, "dC": 0, "dD": 1},
        # only relevant document sits at rank 11
        "q2": {"rel2": 1},
        # judged, but absent from the run: must count as 0, not be skipped
        "q3": {"rel3": 1},
        # binary, relevant at ranks 1 and 3
        "q4": {"dF": 1, "dG": 1},
        # nothing relevant: not part of the mean at all
        "q5": {"dH": 0},
    }
    q1_rank = ["dX", "dA", "dC", "dB", "dY"]
    q2_rank = [*decoys("q2", 10), "rel2", *decoys("q2b", 5)]
    q4_rank = ["dF", "dZ", "dG"]
    run = {
        "q1": run_from_ranking(q1_rank),
        "q2": run_from_ranking(q2_rank),
        "q4": run_from_ranking(q4_rank),
        "q5": run_from_ranking(["dH", "dX"]),
        "q_not_judged": run_from_ranking(["dA"]),
    }

    # Per query, by hand.
    q1_ndcg = (2 / math.log2(3) + 1 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4))
    q1_recall = 2 / 3  # dA and dB retrieved, dD not
    q1_mrr = 1 / 2  # first relevant (dA) at rank 2
    q2_ndcg, q2_recall, q2_mrr = 0.0, 1.0, 0.0
    q3_ndcg, q3_recall, q3_mrr = 0.0, 0.0, 0.0
    q4_ndcg = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    q4_recall, q4_mrr = 1.0, 1.0

    # Cross-check the hand formulas against the generic helper (guards against typos above).
    assert q1_ndcg == pytest.approx(ndcg_at(q1_rank, qrels["q1"], 10), abs=TOL)
    assert q4_ndcg == pytest.approx(ndcg_at(q4_rank, qrels["q4"], 10), abs=TOL)

    expected = {
        "ndcg@10": (q1_ndcg + q2_ndcg + q3_ndcg + q4_ndcg) / 4,
        "recall@100": (q1_recall + q2_recall + q3_recall + q4_recall) / 4,
        "mrr@10": (q1_mrr + q2_mrr + q3_mrr + q4_mrr) / 4,
    }
    return qrels, run, expected


def test_toy_run_matches_hand_computation(toy):
    qrels, run, expected = toy
    result = evaluate_run(qrels, run)
    assert set(result) == set(HEADLINE_METRICS)
    for name in HEADLINE_METRICS:
        assert result[name] == pytest.approx(expected[name], abs=TOL), name


def test_each_query_alone(toy):
    """Per-query values, so a wrong mean cannot hide a compensating per-query error."""
    qrels, run, _ = toy
    q1 = evaluate_run({"q1": qrels["q1"]}, run)
    assert q1["ndcg@10"] == pytest.approx(
        (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3) + 1 / 2), abs=TOL
    )
    assert q1["recall@100"] == pytest.approx(2 / 3, abs=TOL)
    assert q1["mrr@10"] == pytest.approx(0.5, abs=TOL)

    q2 = evaluate_run({"q2": qrels["q2"]}, run)
    # Rank 11: outside the nDCG@10 and MRR@10 cut-offs, inside recall@100.
    assert q2 == pytest.approx({"ndcg@10": 0.0, "recall@100": 1.0, "mrr@10": 0.0}, abs=TOL)

    q3 = evaluate_run({"q3": qrels["q3"]}, run)
    assert q3 == pytest.approx({"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}, abs=TOL)


def test_missing_query_counts_as_zero_not_skipped():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}}
    perfect_a = {"a": {"d1": 1.0}}
    result = evaluate_run(qrels, perfect_a)
    # trec_eval alone would average over 'a' only and report 1.0.
    assert result == pytest.approx({"ndcg@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5}, abs=TOL)
    # An empty ranking for a query is the same as no ranking.
    assert evaluate_run(qrels, {**perfect_a, "b": {}}) == pytest.approx(result, abs=TOL)


def test_recall_cut_at_100():
    ranking = [*decoys("r", 99), "rel"]  # rel at rank 100
    assert evaluate_run({"q": {"rel": 1}}, {"q": run_from_ranking(ranking)})["recall@100"] == pytest.approx(1.0)
    ranking = [*decoys("r", 100), "rel"]  # rel at rank 101
    assert evaluate_run({"q": {"rel": 1}}, {"q": run_from_ranking(ranking)})["recall@100"] == pytest.approx(0.0)


def test_mrr_uses_first_relevant_in_top_10():
    for rank in range(1, 12):
        ranking = [*decoys("m", rank - 1), "rel", "rel_b", *decoys("n", 3)]
        result = evaluate_run({"q": {"rel": 1, "rel_b": 1}}, {"q": run_from_ranking(ranking)})
        expected = 1 / rank if rank <= 10 else 0.0
        assert result["mrr@10"] == pytest.approx(expected, abs=TOL), rank


def test_ties_are_broken_the_same_way_for_every_metric():
    """Equal scores: trec_eval orders by doc id descending; the MRR@10 cut must agree with that order."""
    docs = [f"d{i:02d}" for i in range(11)]  # d10 ranks 1st, d00 ranks 11th
    run = {"q": dict.fromkeys(docs, 1.0)}

    mid = evaluate_run({"q": {"d05": 1}}, run)  # d10, d09, ..., d05 -> rank 6
    assert mid["mrr@10"] == pytest.approx(1 / 6, abs=TOL)
    assert mid["ndcg@10"] == pytest.approx(1 / math.log2(7), abs=TOL)

    last = evaluate_run({"q": {"d00": 1}}, run)  # rank 11: outside the cut for both
    assert last == pytest.approx({"ndcg@10": 0.0, "recall@100": 1.0, "mrr@10": 0.0}, abs=TOL)


def test_only_positive_grades_are_relevant():
    # d0 judged 0 at rank 1 must not count as a hit; d1 (grade 3) at rank 2 is the first relevant.
    result = evaluate_run({"q": {"d0": 0, "d1": 3}}, {"q": {"d0": 2.0, "d1": 1.0}})
    assert result["mrr@10"] == pytest.approx(0.5, abs=TOL)
    assert result["ndcg@10"] == pytest.approx((3 / math.log2(3)) / 3, abs=TOL)
    assert result["recall@100"] == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("qrels", [{}, {"q": {"d": 0}}, {"q": {}, "r": {"d": 0, "e": 0}}])
def test_raises_when_no_query_has_a_relevant_doc(qrels):
    with pytest.raises(ValueError):
        evaluate_run(qrels, {"q": {"d": 1.0}})


def test_per_query_metrics_match_each_query_alone_and_average_to_the_run(toy):
    qrels, run, expected = toy
    per_query = per_query_metrics(qrels, run)
    judged = [q for q, docs in qrels.items() if any(g > 0 for g in docs.values())]
    assert sorted(per_query) == sorted(judged)
    for q in judged:
        assert per_query[q] == pytest.approx(evaluate_run({q: qrels[q]}, run), abs=TOL), q
    for name in HEADLINE_METRICS:
        assert sum(m[name] for m in per_query.values()) / len(per_query) == pytest.approx(expected[name], abs=TOL)


def test_per_query_metrics_give_zero_to_a_query_without_a_ranking():
    per_query = per_query_metrics({"a": {"d1": 1}, "b": {"d2": 1}}, {"a": {"d1": 1.0}})
    assert per_query["b"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert per_query["a"]["ndcg@10"] == pytest.approx(1.0)


def test_paired_change_mean_and_standard_error():
    before = {"a": {"ndcg@10": 0.5}, "b": {"ndcg@10": 0.2}, "c": {"ndcg@10": 0.9}}
    after = {"a": {"ndcg@10": 0.6}, "b": {"ndcg@10": 0.2}, "c": {"ndcg@10": 0.7}}
    deltas = [0.1, 0.0, -0.2]
    mean = sum(deltas) / 3
    stderr = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2 / 3)
    result = paired_change(before, after)
    assert result["mean"] == pytest.approx(mean, abs=TOL)
    assert result["stderr"] == pytest.approx(stderr, abs=TOL)
    assert result["queries"] == 3
    # The same shift on every query is no noise at all.
    assert paired_change(before, {q: {"ndcg@10": m["ndcg@10"] + 0.1} for q, m in before.items()})[
        "stderr"
    ] == pytest.approx(0.0, abs=TOL)
