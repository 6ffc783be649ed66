"""Calibration engine on constructed data where the answer is known: ECE and threshold figures,
relevance_min_grade on graded labels, Platt fits that recover a known P(relevant), shift invariance,
the not-fitted reasons and the saved file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from app.evaluation import calibration as cal


def test_ece_of_constructed_bins():
    # 10 scores of 0.85 with 8 relevant (calibrated) and 10 of 0.15 with 5 relevant (off by 0.35).
    scores = np.array([0.85] * 10 + [0.15] * 10)
    labels = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5)
    ece, table = cal.expected_calibration_error(scores, labels)
    assert ece == pytest.approx(0.5 * abs(0.85 - 0.8) + 0.5 * abs(0.15 - 0.5))
    assert [(b["low"], b["count"]) for b in table] == [(0.1, 10), (0.8, 10)]
    assert table[1]["relevant_share"] == pytest.approx(0.8)
    # A score of exactly 1.0 falls in the last bin, not off the end.
    ece_one, table_one = cal.expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 0]))
    assert ece_one == pytest.approx(0.5) and table_one[0]["high"] == 1.0


def test_calibration_report_precision_recall_and_results_per_query():
    served = {"q1": {"a": 0.95, "b": 0.88, "c": 0.6}, "q2": {"x": 0.72, "y": 0.4}}
    qrels = {"q1": {"a": 1, "c": 1, "z": 1}, "q2": {"y": 1}, "q3": {"w": 1}}  # q3: judged, nothing served
    report = cal.calibration_report(served, qrels)
    assert report.queries == 3 and report.pairs == 5
    t85, t5, t9 = report.thresholds[0.85], report.thresholds[0.5], report.thresholds[0.9]
    assert (t85.passing, t85.precision, t85.recall) == (2, 0.5, 1 / 5)  # a, b pass; a is relevant; 5 relevant
    assert t85.results_per_query == pytest.approx(2 / 3)
    assert (t5.passing, t5.precision, t5.recall) == (4, 0.5, 2 / 5)  # a, b, c, x; a and c relevant
    assert (t9.passing, t9.precision) == (1, 1.0)
    nothing = cal.calibration_report(served, qrels, thresholds=(0.99,)).thresholds[0.99]
    assert nothing.precision is None and nothing.passing == 0 and nothing.recall == 0.0
    metrics = report.metrics()
    assert metrics["precision@t0.85"] == 0.5 and metrics["recall@t0.7"] == pytest.approx(1 / 5)
    labels = [1, 0, 1, 0, 1]
    expected_ece, _ = cal.expected_calibration_error(np.array([0.95, 0.88, 0.6, 0.72, 0.4]), np.array(labels))
    assert report.ece == pytest.approx(expected_ece)


def test_relevance_min_grade_on_graded_labels():
    served = {"q": {"a": 0.9, "b": 0.8, "c": 0.3}}
    qrels = {"q": {"a": 2, "b": 1, "c": 3}}
    at_1 = cal.calibration_report(served, qrels, min_grade=1).thresholds[0.5]
    at_2 = cal.calibration_report(served, qrels, min_grade=2).thresholds[0.5]
    assert (at_1.precision, at_1.recall) == (1.0, 2 / 3)  # a and b relevant at grade >= 1
    assert (at_2.precision, at_2.recall) == (0.5, 1 / 2)  # only a and c count at grade >= 2

    run, qrels_graded = _graded_run(np.random.default_rng(3))
    fit_1 = cal.fit_embedder_calibration(run, qrels_graded, top_n=10, min_grade=1)
    fit_2 = cal.fit_embedder_calibration(run, qrels_graded, top_n=10, min_grade=2)
    relevant = [f.maps[cal.EMBEDDER_MAP].fitted_on["relevant"] for f in (fit_1, fit_2)]
    assert relevant[0] > relevant[1] >= cal.MIN_RELEVANT_PAIRS
    assert fit_2.relevance_min_grade == 2
    # The stricter definition of relevant gives a lower probability for the same cosine.
    assert fit_2.predict(np.array([0.5]))[0] < fit_1.predict(np.array([0.5]))[0]


def _graded_run(rng: np.random.Generator, queries: int = 80):
    run, qrels = {}, {}
    for q in range(queries):
        cosines = rng.uniform(0, 1, 12)
        grades = (cosines + rng.normal(0, 0.2, 12) > np.array([[0.6], [0.85]])).sum(axis=0)  # 0, 1 or 2
        run[f"q{q}"] = {f"d{q}_{i}": float(c) for i, c in enumerate(cosines)}
        qrels[f"q{q}"] = {f"d{q}_{i}": int(g) for i, g in enumerate(grades) if g > 0}
    return run, qrels


def _synthetic_embedder_run(rng: np.random.Generator, slope: float, bias: float, queries: int = 200, per: int = 10):
    """Cosines whose true P(relevant) is sigmoid(slope * cosine + bias)."""
    run, qrels = {}, {}
    for q in range(queries):
        cosines = rng.uniform(0.1, 0.9, per)
        relevant = rng.uniform(size=per) < expit(slope * cosines + bias)
        run[f"q{q}"] = {f"d{q}_{i}": float(c) for i, c in enumerate(cosines)}
        qrels[f"q{q}"] = {f"d{q}_{i}": 1 for i in np.flatnonzero(relevant)}
    return run, qrels


def test_embedder_fit_recovers_a_known_probability_and_calibrates_held_out_queries(tmp_path: Path):
    rng = np.random.default_rng(0)
    fit_run, fit_qrels = _synthetic_embedder_run(rng, slope=8.0, bias=-4.0)
    fitted = cal.fit_embedder_calibration(fit_run, fit_qrels, top_n=10)
    assert fitted and fitted.kind == "embedder"
    grid = np.linspace(0.1, 0.9, 9)
    assert np.abs(fitted.predict(grid) - expit(8.0 * grid - 4.0)).max() < 0.08

    test_run, test_qrels = _synthetic_embedder_run(rng, slope=8.0, bias=-4.0)
    calibrated = cal.calibration_report(cal.served_embedder_scores(test_run, 10, fitted), test_qrels)
    raw = cal.calibration_report(cal.served_embedder_scores(test_run, 10, None), test_qrels)
    assert calibrated.ece < 0.05 and calibrated.ece < raw.ece / 2, (calibrated.ece, raw.ece)

    path = fitted.save(tmp_path)
    assert path.name == cal.FILE_NAME
    loaded = cal.load(tmp_path)
    assert loaded == fitted
    np.testing.assert_array_equal(loaded.predict(grid), fitted.predict(grid))
    assert loaded.summary()["maps"]["first_stage"]["fitted_on"]["queries"] == 200


def test_too_few_judgements_gives_a_reason_that_is_saved(tmp_path: Path):
    run = {f"q{i}": {"a": 0.9, "b": 0.2} for i in range(5)}
    qrels = {f"q{i}": {"a": 1} for i in range(5)}
    result = cal.fit_embedder_calibration(run, qrels, top_n=10)
    assert not result and isinstance(result, cal.Uncalibrated)
    assert "5 relevant" in result.reason and str(cal.MIN_RELEVANT_PAIRS) in result.reason
    all_relevant = {f"q{i}": {"a": 1, "b": 1} for i in range(5)}
    assert "one non-relevant" in cal.fit_embedder_calibration(run, all_relevant).reason

    assert cal.load_status(tmp_path) == (None, cal.NO_FILE_REASON)  # an older model: no file
    result.save(tmp_path)
    assert cal.load_status(tmp_path) == (None, result.reason)
    (tmp_path / cal.FILE_NAME).write_text("{not json")
    fitted, reason = cal.load_status(tmp_path)
    assert fitted is None and "unreadable" in reason


def _synthetic_reranker_runs(rng: np.random.Generator, queries: int = 150, per: int = 20, offsets: bool = True):
    """A first stage and logits both informative; each query's logits carry an offset a listwise loss allows."""
    first_stage, reranked, qrels = {}, {}, {}
    for q in range(queries):
        quality = rng.normal(size=per)
        relevant = rng.uniform(size=per) < expit(2.5 * quality - 2.5)
        cosines = 0.5 + 0.1 * quality + rng.normal(0, 0.1, per)
        logits = 3.0 * quality + rng.normal(0, 1.0, per) + (rng.normal(0, 3.0) if offsets else 0.0)
        docs = [f"d{q}_{i}" for i in range(per)]
        first_stage[f"q{q}"] = dict(zip(docs, cosines.tolist(), strict=True))
        reranked[f"q{q}"] = dict(zip(docs, logits.tolist(), strict=True))
        qrels[f"q{q}"] = {d: 1 for d, r in zip(docs, relevant, strict=True) if r}
    return first_stage, reranked, qrels


def test_reranker_fit_is_invariant_to_a_constant_added_to_the_logits():
    first_stage, reranked, qrels = _synthetic_reranker_runs(np.random.default_rng(1))
    shifted = {q: {d: s + 7.5 for d, s in docs.items()} for q, docs in reranked.items()}
    fits = [cal.fit_reranker_calibration(first_stage, r, qrels, 20, 10, 1, "emb") for r in (reranked, shifted)]
    pairs = zip((reranked, shifted), fits, strict=True)
    served = [cal.served_reranker_scores(first_stage, r, 20, 10, f, "emb") for r, f in pairs]
    for qid in served[0]:
        assert list(served[0][qid]) == list(served[1][qid])  # the same hits in the same order
        np.testing.assert_allclose(list(served[0][qid].values()), list(served[1][qid].values()), atol=1e-6)
    assert [m.features for m in fits[0].maps.values()] == [m.features for m in fits[1].maps.values()]


def test_reranker_maps_choose_features_on_held_out_queries_and_apply_by_first_stage_model():
    first_stage, reranked, qrels = _synthetic_reranker_runs(np.random.default_rng(2))
    fitted = cal.fit_reranker_calibration(first_stage, reranked, qrels, rerank_k=20, first_stage_model="emb")
    assert fitted.kind == "reranker" and fitted.first_stage_model == "emb"
    with_first = fitted.maps[cal.WITH_FIRST_STAGE_MAP]
    only = fitted.maps[cal.RERANKER_ONLY_MAP]
    assert with_first.features[:2] == [cal.FIRST_STAGE, cal.LOGIT] and cal.FIRST_STAGE not in only.features
    # Per-query offsets of the logits: the relative logit removes them, so it earns its place here.
    assert cal.LOGIT_MINUS_MAX in only.features, only
    assert with_first.held_out_log_loss is not None and with_first.held_out_log_loss > 0
    assert fitted.map_for("emb")[0] == cal.WITH_FIRST_STAGE_MAP
    assert fitted.map_for("another-embedder")[0] == cal.RERANKER_ONLY_MAP
    assert fitted.map_for(None)[0] == cal.RERANKER_ONLY_MAP
    with pytest.raises(ValueError):
        fitted.predict(np.array([0.5]))  # a reranker's map needs logits

    # Without offsets, the absolute logit alone is as good: the simpler map is kept.
    plain = cal.fit_reranker_calibration(*_synthetic_reranker_runs(np.random.default_rng(4), offsets=False), 20)
    assert plain.maps[cal.RERANKER_ONLY_MAP].features == [cal.LOGIT]

    # Held-out queries: the calibrated score is far better calibrated than sigmoid(logit) as served.
    test_first, test_reranked, test_qrels = _synthetic_reranker_runs(np.random.default_rng(5))
    served = cal.served_reranker_scores(test_first, test_reranked, 20, 10, fitted, "emb")
    sigmoid = cal.served_reranker_scores(test_first, test_reranked, 20, 10, None)
    calibrated_ece = cal.calibration_report(served, test_qrels).ece
    assert calibrated_ece < 0.06 and calibrated_ece < cal.calibration_report(sigmoid, test_qrels).ece / 2


def test_score_query_orders_by_the_calibrated_score_so_a_threshold_keeps_a_prefix():
    first_stage, reranked, qrels = _synthetic_reranker_runs(np.random.default_rng(6))
    fitted = cal.fit_reranker_calibration(first_stage, reranked, qrels, 20, first_stage_model="emb")
    for qid in list(first_stage)[:20]:
        docs = list(first_stage[qid])
        first = np.array([first_stage[qid][d] for d in docs])
        logits = np.array([reranked[qid][d] for d in docs])
        scored = cal.score_query(first, logits, fitted, "emb", first_stage_weight=0.5)
        served = scored.score[scored.order]
        assert scored.calibrated and np.all(np.diff(served) <= 0)
        passing = served >= 0.5
        assert not np.any(passing[1:] & ~passing[:-1])  # no failing hit ranks above a passing one
        assert scored.fused is not None  # fusion is still reported, as information
    uncalibrated = cal.score_query(first, logits, None, "emb", first_stage_weight=0.0)
    assert not uncalibrated.calibrated
    np.testing.assert_allclose(uncalibrated.score, expit(logits))
    assert uncalibrated.order.tolist() == np.argsort(-logits, kind="stable").tolist()


def _unlearned_reranker_runs(rng: np.random.Generator, queries: int = 20, per: int = 40):
    """A first stage that ranks each query's 2 relevant candidates near the top, and logits of noise: a
    reranker that has not learned. Its own top 10 holds about a quarter of them, its first stage's all."""
    first_stage, reranked, qrels = {}, {}, {}
    for q in range(queries):
        docs = [f"d{q}_{i}" for i in range(per)]
        cosines = rng.uniform(0.1, 0.5, per)
        cosines[:2] += 0.4  # the relevant two
        first_stage[f"q{q}"] = dict(zip(docs, cosines.tolist(), strict=True))
        reranked[f"q{q}"] = dict(zip(docs, rng.normal(size=per).tolist(), strict=True))
        qrels[f"q{q}"] = {docs[0]: 1, docs[1]: 1}
    return first_stage, reranked, qrels


def test_a_reranker_that_has_not_learned_is_calibrated_over_its_first_stage_only(tmp_path: Path):
    first_stage, reranked, qrels = _unlearned_reranker_runs(np.random.default_rng(7))
    fitted = cal.fit_reranker_calibration(first_stage, reranked, qrels, 40, 10, 1, "emb")
    assert fitted, getattr(fitted, "reason", None)  # before: no calibration at all (the logit's top 10 decided)
    assert set(fitted.maps) == {cal.WITH_FIRST_STAGE_MAP}
    assert "too few" in fitted.missing[cal.RERANKER_ONLY_MAP]
    assert fitted.gap("emb") is None and "reranker_only" in fitted.gap("another-embedder")
    # The map leans on the cosine, so what it serves over its first stage keeps the relevant pairs on top.
    with_first = fitted.maps[cal.WITH_FIRST_STAGE_MAP]
    assert with_first.fitted_on["relevant"] == 2 * len(qrels)
    served = cal.served_reranker_scores(first_stage, reranked, 40, 2, fitted, "emb")
    assert all(set(served[q]) == set(qrels[q]) for q in qrels)
    # Over another embedder's index it is uncalibrated: sigmoid(logit), flagged as such.
    first, logits = np.array(list(first_stage["q0"].values())), np.array(list(reranked["q0"].values()))
    assert cal.score_query(first, logits, fitted, "emb").calibrated
    elsewhere = cal.score_query(first, logits, fitted, "another-embedder")
    assert not elsewhere.calibrated and np.allclose(elsewhere.score, expit(logits))
    # The missing map and its reason travel with the saved file; an older file without them still loads.
    fitted.save(tmp_path)
    assert cal.load(tmp_path) == fitted and "missing" in cal.load(tmp_path).summary()
    older = {k: v for k, v in fitted.to_dict().items() if k != "missing"}
    assert cal.Calibration.from_dict(older).missing == {}
