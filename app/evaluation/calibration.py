"""Calibrated scores: P(relevant | query, document) from a model's raw scores, fitted on validation queries.

Why: a listwise (group-softmax) reranker loss does not change when a constant is added to a query's
logits, so ``sigmoid(logit)`` is not a probability of anything, and a cosine is not one either. A
threshold such as "> 0.85" needs a map from the raw scores to P(relevant), fitted on held-out judged
candidates: Platt scaling, i.e. scikit-learn's ``LogisticRegression`` over the raw features (for a
reranker over the first-stage cosine and the logit at once, which fuses and calibrates in one model).

The map is fitted on each query's top ``top_n`` candidates in the order the calibrated score serves
them (the results people see and threshold), not on the long tail of a query's candidates, which
would pull the map towards the easy negatives. The fitted coefficients are folded back onto the raw
features, so ``calibration.json`` is plain JSON and a prediction is one dot product and a sigmoid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.special import expit

from app.retrieval.fusion import fuse

FILE_NAME = "calibration.json"
METHOD = "platt"
DEFAULT_TOP_N = 10  # search serves 10 results by default; ECE is measured over them
MIN_RELEVANT_PAIRS = 20
REPORT_THRESHOLDS = (0.5, 0.7, 0.85, 0.9)
ECE_BINS = 10
# A map with more features is kept only if it lowers the held-out log loss by more than this (nats per pair):
# a richer map must earn its place, and a near-tie does not flip between two fits of equivalent data.
RICHER_MAP_MARGIN = 1e-3
SERVED_REFITS = 2  # fit on the top_n by the raw order, then on the top_n by the first fit's order
CV_FOLDS = 5

# Feature names a map may use; each is computable per query at search time.
FIRST_STAGE = "first_stage"  # the first stage's cosine (inner product of normalised vectors)
LOGIT = "logit"  # the reranker's raw logit
LOGIT_MINUS_MAX = "logit_minus_max"  # the logit relative to the best logit among the query's candidates

EMBEDDER_MAP = "first_stage"
WITH_FIRST_STAGE_MAP = "with_first_stage"
RERANKER_ONLY_MAP = "reranker_only"

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


@dataclass
class PlattMap:
    """sigmoid(intercept + coefficients . features), the features named in ``features``."""

    features: list[str]
    coefficients: list[float]
    intercept: float
    fitted_on: dict[str, int]  # queries, pairs, relevant (the sample of the final fit)
    held_out_log_loss: float | None = None  # over the validation queries, by query folds

    def predict(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return expit(self.intercept + _matrix(columns, self.features) @ np.asarray(self.coefficients))


@dataclass
class Calibration:
    """A fitted calibration of one model, saved as ``calibration.json`` in the model's folder.

    An embedder has one map (``first_stage``: the cosine). A reranker has two: ``with_first_stage``
    (cosine and logit), valid only over an index built with ``first_stage_model``, and
    ``reranker_only`` (the logit alone), used over any other index. A reranker whose own top results
    hold too few relevant validation pairs has no ``reranker_only`` map (``missing`` says why): over
    another index its scores are uncalibrated, while over its first stage's index they still are.
    """

    kind: Literal["embedder", "reranker"]
    maps: dict[str, PlattMap]
    relevance_min_grade: int
    top_n: int
    first_stage_model: str | None = None
    method: str = METHOD
    missing: dict[str, str] = field(default_factory=dict)  # a map that could not be fitted -> why

    def map_name(self, first_stage_model: str | None = None) -> str:
        """The name of the map that applies over an index built with ``first_stage_model``."""
        if self.kind == "embedder":
            return EMBEDDER_MAP
        if first_stage_model is not None and first_stage_model == self.first_stage_model:
            return WITH_FIRST_STAGE_MAP
        return RERANKER_ONLY_MAP

    def gap(self, first_stage_model: str | None = None) -> str | None:
        """Why no map applies over an index built with ``first_stage_model``; None when one does."""
        name = self.map_name(first_stage_model)
        if name in self.maps:
            return None
        return f"no '{name}' map: {self.missing.get(name, 'not fitted')}"

    def map_for(self, first_stage_model: str | None = None) -> tuple[str, PlattMap]:
        """The map that applies over an index built with ``first_stage_model`` (its name, the map);
        a KeyError when it is missing (``gap`` says so first)."""
        name = self.map_name(first_stage_model)
        return name, self.maps[name]

    def predict(
        self, first_stage: np.ndarray, logits: np.ndarray | None = None, first_stage_model: str | None = None
    ) -> np.ndarray:
        """P(relevant) of one query's candidates (their first-stage scores and, for a reranker, logits)."""
        if self.kind == "reranker" and logits is None:
            raise ValueError("a reranker's calibration needs the logits")
        _, platt = self.map_for(first_stage_model)
        return platt.predict(query_columns(np.asarray(first_stage), None if logits is None else np.asarray(logits)))

    def to_dict(self) -> dict:
        return {"fitted": True, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Calibration:
        maps = {name: PlattMap(**platt) for name, platt in data["maps"].items()}
        fields = {k: data[k] for k in ("kind", "relevance_min_grade", "top_n", "first_stage_model", "method")}
        return cls(maps=maps, missing=dict(data.get("missing") or {}), **fields)  # older files: no `missing`

    def summary(self) -> dict:
        """What ``/models`` shows: the method, the maps' features and what each was fitted on, and
        any map that could not be fitted, with the reason."""
        maps = {n: {"features": m.features, "fitted_on": m.fitted_on} for n, m in self.maps.items()}
        keep = ("method", "kind", "relevance_min_grade", "top_n", "first_stage_model")
        return {
            **{k: getattr(self, k) for k in keep},
            "maps": maps,
            **({"missing": self.missing} if self.missing else {}),
        }

    def save(self, model_dir: str | Path) -> Path:
        return _write(model_dir, self.to_dict())

    def __bool__(self) -> bool:
        return True


@dataclass
class Uncalibrated:
    """No calibration could be fitted; the reason is saved so ``/models`` and ``/search`` can say why.

    Falsy, so ``if not fitted:`` reads as "no calibration".
    """

    reason: str
    relevance_min_grade: int = 1
    top_n: int = DEFAULT_TOP_N

    def save(self, model_dir: str | Path) -> Path:
        return _write(model_dir, {"fitted": False, **asdict(self)})

    def __bool__(self) -> bool:
        return False


NO_FILE_REASON = "no calibration fitted (the model was not produced by a job that fits one, e.g. older or bundled)"


def _write(model_dir: str | Path, data: dict) -> Path:
    path = Path(model_dir) / FILE_NAME
    path.write_text(json.dumps(data, indent=2))
    return path


def load_status(model_dir: str | Path) -> tuple[Calibration | None, str | None]:
    """The model's calibration, or None and the reason it has none."""
    path = Path(model_dir) / FILE_NAME
    return status_from_text(path.read_text() if path.is_file() else None)


def status_from_text(text: str | None) -> tuple[Calibration | None, str | None]:
    """The calibration a ``calibration.json`` holds (None: no file), or None and the reason."""
    if text is None:
        return None, NO_FILE_REASON
    try:
        data = json.loads(text)
        if not data.get("fitted"):
            return None, str(data.get("reason") or "no calibration fitted")
        return Calibration.from_dict(data), None
    except (ValueError, KeyError, TypeError) as exc:  # a damaged file: say so rather than fail the request
        return None, f"{FILE_NAME} is unreadable ({type(exc).__name__}: {exc})"


def load(model_dir: str | Path) -> Calibration | None:
    return load_status(model_dir)[0]


# --- features -------------------------------------------------------------------------------------


def query_columns(first_stage: np.ndarray, logits: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every feature of one query's candidates (each computable at search time from the same scores)."""
    columns = {FIRST_STAGE: np.asarray(first_stage, dtype=np.float64)}
    if logits is not None:
        logits = np.asarray(logits, dtype=np.float64)
        columns[LOGIT] = logits
        columns[LOGIT_MINUS_MAX] = logits - logits.max() if logits.size else logits
    return columns


def _matrix(columns: Mapping[str, np.ndarray], features: Sequence[str]) -> np.ndarray:
    return np.column_stack([np.asarray(columns[f], dtype=np.float64) for f in features])


@dataclass
class _Query:
    columns: dict[str, np.ndarray]
    labels: np.ndarray  # bool: grade >= min_grade


def _relevant(qrels: Qrels, qid: str, docs: Sequence[str], min_grade: int) -> np.ndarray:
    judged = qrels.get(qid, {})
    return np.array([judged.get(d, 0) >= min_grade for d in docs], dtype=bool)


def _embedder_queries(run: Run, qrels: Qrels, min_grade: int) -> list[_Query]:
    queries = []
    for qid in sorted(q for q in run if q in qrels):
        docs = list(run[qid])
        queries.append(
            _Query(query_columns(np.array([run[qid][d] for d in docs]), None), _relevant(qrels, qid, docs, min_grade))
        )
    return queries


def _head(first_stage_run: Run, qid: str, rerank_k: int) -> list[str]:
    return sorted(first_stage_run[qid], key=first_stage_run[qid].get, reverse=True)[:rerank_k]


def _reranker_queries(
    first_stage_run: Run, reranked_run: Run, qrels: Qrels, rerank_k: int, min_grade: int
) -> list[_Query]:
    queries = []
    for qid in sorted(q for q in first_stage_run if q in qrels and q in reranked_run):
        docs = _head(first_stage_run, qid, rerank_k)
        first = np.array([first_stage_run[qid][d] for d in docs])
        logits = np.array([reranked_run[qid][d] for d in docs])
        queries.append(_Query(query_columns(first, logits), _relevant(qrels, qid, docs, min_grade)))
    return queries


# --- fitting --------------------------------------------------------------------------------------


def _sample(queries: Sequence[_Query], features: Sequence[str], order: Sequence[np.ndarray], top_n: int):
    """Each query's top ``top_n`` candidates by ``order``: the feature matrix and the labels."""
    rows, labels = [], []
    for query, scores in zip(queries, order, strict=True):
        top = np.argsort(-np.asarray(scores), kind="stable")[:top_n]
        rows.append(_matrix(query.columns, features)[top])
        labels.append(query.labels[top])
    if not rows:
        return np.zeros((0, len(features))), np.zeros(0, dtype=bool)
    return np.vstack(rows), np.concatenate(labels)


def _platt(x: np.ndarray, y: np.ndarray, features: Sequence[str], queries: int) -> PlattMap:
    """scikit-learn's logistic regression on standardised features, folded back onto the raw ones.

    Standardising first makes the fit invariant to a constant added to any feature (the intercept
    takes it), as a listwise reranker's logits allow, and keeps the L2 penalty scale-free.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0, max_iter=1000, tol=1e-8).fit(scaler.transform(x), y)
    weights = model.coef_[0] / scaler.scale_
    intercept = float(model.intercept_[0] - np.dot(weights, scaler.mean_))
    counts = {"queries": queries, "pairs": len(y), "relevant": int(y.sum())}
    return PlattMap(list(features), [float(w) for w in weights], intercept, counts)


def _fit_served(queries: Sequence[_Query], features: Sequence[str], first_order: str, top_n: int) -> PlattMap:
    """Fit on the top ``top_n`` by the raw order, then refit on the top ``top_n`` the fitted map serves."""
    order = [q.columns[first_order] for q in queries]
    platt = None
    for _ in range(SERVED_REFITS):
        x, y = _sample(queries, features, order, top_n)
        if platt is not None and len(set(y)) < 2:
            break  # the refit's sample lost a class: keep the fit that had both
        platt = _platt(x, y, features, len(queries))
        order = [platt.predict(q.columns) for q in queries]
    return platt


def _held_out_log_loss(queries: Sequence[_Query], features: Sequence[str], first_order: str, top_n: int) -> float:
    """Log loss on held-out queries (query folds) of their top ``top_n`` as each fold's map serves them."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import KFold

    total, pairs = 0.0, 0
    if len(queries) < 2:
        return float("inf")  # no held-out query: the simplest feature set is kept
    for train, test in KFold(min(CV_FOLDS, len(queries)), shuffle=True, random_state=0).split(queries):
        fold = [queries[i] for i in train]
        if len(set(_sample(fold, features, [q.columns[first_order] for q in fold], top_n)[1])) < 2:
            continue
        platt = _fit_served(fold, features, first_order, top_n)
        held = [queries[i] for i in test]
        x, y = _sample(held, features, [platt.predict(q.columns) for q in held], top_n)
        probabilities = expit(platt.intercept + x @ np.asarray(platt.coefficients))
        total += log_loss(y, probabilities, labels=[False, True], normalize=False)
        pairs += len(y)
    return total / pairs if pairs else float("inf")


def _too_few(queries: Sequence[_Query], first_order: str, top_n: int) -> str | None:
    _, y = _sample(queries, [first_order], [q.columns[first_order] for q in queries], top_n)
    relevant = int(y.sum())
    if relevant < MIN_RELEVANT_PAIRS or relevant == len(y):
        return (
            f"too few validation judgements to fit a calibration: {relevant} relevant of {len(y)} pairs in the "
            f"top {top_n} of {len(queries)} queries (at least {MIN_RELEVANT_PAIRS} relevant and one non-relevant)"
        )
    return None


def _fit_best(
    queries: Sequence[_Query], feature_sets: Sequence[Sequence[str]], first_order: str, top_n: int
) -> PlattMap:
    """The feature set with the lowest held-out log loss (simplest first; a richer one must beat it by a margin)."""
    best_features, best_loss = None, float("inf")
    for features in feature_sets:
        loss = _held_out_log_loss(queries, features, first_order, top_n)
        if best_features is None or loss < best_loss - RICHER_MAP_MARGIN:
            best_features, best_loss = features, loss
    platt = _fit_served(queries, best_features, first_order, top_n)
    platt.held_out_log_loss = best_loss if np.isfinite(best_loss) else None
    return platt


def fit_embedder_calibration(
    run: Run, qrels: Qrels, top_n: int = DEFAULT_TOP_N, min_grade: int = 1
) -> Calibration | Uncalibrated:
    """Platt scaling of an embedder's cosine on the validation queries' run (query -> doc -> cosine)."""
    queries = _embedder_queries(run, qrels, min_grade)
    reason = _too_few(queries, FIRST_STAGE, top_n)
    if reason:
        return Uncalibrated(reason, min_grade, top_n)
    platt = _fit_best(queries, [[FIRST_STAGE]], FIRST_STAGE, top_n)
    return Calibration("embedder", {EMBEDDER_MAP: platt}, min_grade, top_n)


# Feature sets a reranker's maps choose from, simplest first. The relative logit (logit minus the
# query's best logit) removes a per-query offset, which a listwise loss leaves free; the absolute logit
# keeps the "nothing here is relevant" signal that a relative one loses (the best candidate is always 0).
# Which matters more depends on the model and data, so the held-out log loss of the validation queries
# (query folds) chooses.
WITH_FIRST_STAGE_FEATURES = ([FIRST_STAGE, LOGIT], [FIRST_STAGE, LOGIT, LOGIT_MINUS_MAX])
RERANKER_ONLY_FEATURES = ([LOGIT], [LOGIT, LOGIT_MINUS_MAX])


def fit_reranker_calibration(
    first_stage_run: Run,
    reranked_run: Run,
    qrels: Qrels,
    rerank_k: int,
    top_n: int = DEFAULT_TOP_N,
    min_grade: int = 1,
    first_stage_model: str | None = None,
) -> Calibration | Uncalibrated:
    """Platt scaling of a reranker on the validation queries: each query's top ``rerank_k`` first-stage
    candidates (``first_stage_run``: query -> doc -> cosine) with their logits (``reranked_run``, as
    ``evaluate_reranker`` returns it). ``first_stage_model``: the id of the embedder that made the
    candidates; the map over both scores applies only over an index built with it."""
    queries = _reranker_queries(first_stage_run, reranked_run, qrels, rerank_k, min_grade)
    plans = (
        (WITH_FIRST_STAGE_MAP, WITH_FIRST_STAGE_FEATURES, _richer_start(queries, top_n)),
        (RERANKER_ONLY_MAP, RERANKER_ONLY_FEATURES, LOGIT),
    )
    maps, missing = {}, {}
    for name, feature_sets, start in plans:
        if reason := _too_few(queries, start, top_n):
            missing[name] = reason
        else:
            maps[name] = _fit_best(queries, feature_sets, start, top_n)
    if WITH_FIRST_STAGE_MAP not in maps:  # its start is at least as rich as the logit's: neither fits
        return Uncalibrated(missing[WITH_FIRST_STAGE_MAP], min_grade, top_n)
    return Calibration("reranker", maps, min_grade, top_n, first_stage_model, missing=missing)


def _richer_start(queries: Sequence[_Query], top_n: int) -> str:
    """The raw order whose top ``top_n`` holds more relevant validation pairs: the logit's, unless the
    first stage's holds more (a reranker that has not learned to rank yet), so that the map over both
    scores is fitted on the results it will serve rather than on the logit's misses."""

    def relevant(order: str) -> int:
        return int(_sample(queries, [order], [q.columns[order] for q in queries], top_n)[1].sum())

    return FIRST_STAGE if relevant(FIRST_STAGE) > relevant(LOGIT) else LOGIT


# --- serving: one query's scores and order, as search serves them -----------------------------------


@dataclass
class QueryScores:
    score: np.ndarray  # what `score` shows: P(relevant) when calibrated
    order: np.ndarray  # candidate indices, best first
    fused: np.ndarray | None = None  # the fused 0..1 score, when fusion was asked for
    calibrated: bool = False


def score_query(
    first_stage: np.ndarray,
    logits: np.ndarray | None = None,
    calibration: Calibration | None = None,
    first_stage_model: str | None = None,
    first_stage_weight: float = 0.0,
) -> QueryScores:
    """One query's served scores and order. Calibrated: ordered by P(relevant), so a threshold on it
    keeps a prefix of the order. Uncalibrated (no calibration, or none with a map for this first stage):
    the cosine, or sigmoid(logit) ordered by the fused score (w > 0) or the logit, as search served before
    calibration existed."""
    first_stage = np.asarray(first_stage, dtype=np.float64)
    fused = None
    if logits is not None:
        logits = np.asarray(logits, dtype=np.float64)
        if first_stage_weight:
            fused = fuse(first_stage, logits, first_stage_weight)
    if calibration is not None and calibration.gap(first_stage_model) is None:
        score = calibration.predict(first_stage, logits, first_stage_model)
        return QueryScores(score, np.argsort(-score, kind="stable"), fused, True)
    if logits is None:
        return QueryScores(first_stage, np.argsort(-first_stage, kind="stable"))
    score = expit(logits)
    return QueryScores(score, np.argsort(-(fused if fused is not None else logits), kind="stable"), fused)


def served_embedder_scores(run: Run, top_n: int = DEFAULT_TOP_N, calibration: Calibration | None = None) -> dict:
    """Each query's top ``top_n`` with the score search serves (calibrated P, or the cosine)."""
    served = {}
    for qid, ranking in run.items():
        docs = list(ranking)
        scored = score_query(np.array([ranking[d] for d in docs]), None, calibration)
        served[qid] = {docs[i]: float(scored.score[i]) for i in scored.order[:top_n]}
    return served


def served_reranker_scores(
    first_stage_run: Run,
    reranked_run: Run,
    rerank_k: int,
    top_n: int = DEFAULT_TOP_N,
    calibration: Calibration | None = None,
    first_stage_model: str | None = None,
    first_stage_weight: float = 0.0,
) -> dict:
    """Each query's top ``top_n`` of its reranked top ``rerank_k``, with the score search serves
    (calibrated P, or sigmoid(logit) without a calibration)."""
    served = {}
    for qid in first_stage_run:
        docs = _head(first_stage_run, qid, rerank_k)
        first = np.array([first_stage_run[qid][d] for d in docs])
        logits = np.array([reranked_run[qid][d] for d in docs])
        scored = score_query(first, logits, calibration, first_stage_model, first_stage_weight)
        served[qid] = {docs[i]: float(scored.score[i]) for i in scored.order[:top_n]}
    return served


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class ThresholdFigures:
    precision: float | None  # relevant share of the results at or above the threshold (None: none pass)
    recall: float  # share of all relevant judgements of the queries that pass
    results_per_query: float  # mean number of results at or above it per query
    passing: int  # results at or above it, all queries together


@dataclass
class CalibrationReport:
    ece: float | None  # expected calibration error over the served results, 10 equal-width bins
    queries: int
    pairs: int
    reliability: list[dict] = field(
        default_factory=list
    )  # per non-empty bin: low, high, count, mean_score, relevant_share
    thresholds: dict[float, ThresholdFigures] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat figures for a job's metric points: ``ece``, ``precision@t0.85``, ``recall@t0.85``, ...
        (a threshold that nothing passes has no precision and is left out)."""
        out = {} if self.ece is None else {"ece": self.ece}
        for t, figures in self.thresholds.items():
            if figures.precision is not None:
                out[f"precision@t{t}"] = figures.precision
            out[f"recall@t{t}"] = figures.recall
            out[f"results_per_query@t{t}"] = figures.results_per_query
        return out


def expected_calibration_error(
    scores: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[float, list[dict]]:
    """ECE = sum over equal-width bins of (bin share) x |mean score - relevant share|, and the bins.

    Written out because scikit-learn's ``calibration_curve`` drops the bin counts that weight the ECE.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    index = np.minimum((scores * bins).astype(int), bins - 1)  # a score of 1.0 goes to the last bin
    ece, table = 0.0, []
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        mean_score, share = float(scores[members].mean()), float(labels[members].mean())
        ece += members.sum() / len(scores) * abs(mean_score - share)
        table.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": int(members.sum()),
                "mean_score": mean_score,
                "relevant_share": share,
            }
        )
    return float(ece), table


def calibration_report(
    served: Run, qrels: Qrels, min_grade: int = 1, thresholds: Sequence[float] = REPORT_THRESHOLDS
) -> CalibrationReport:
    """ECE and threshold figures of served results (query -> doc -> score, e.g. each query's top 10
    as search serves them; calibrated P or an uncalibrated sigmoid alike). Every query of ``qrels``
    counts; one missing from ``served`` returned nothing. Unjudged documents count as not relevant."""
    scores, labels, relevant_total = [], [], 0
    for qid, judged in qrels.items():
        relevant_total += sum(g >= min_grade for g in judged.values())
        for doc, score in served.get(qid, {}).items():
            scores.append(score)
            labels.append(judged.get(doc, 0) >= min_grade)
    scores_arr, labels_arr = np.array(scores, dtype=np.float64), np.array(labels, dtype=bool)
    ece, table = expected_calibration_error(scores_arr, labels_arr) if len(scores) else (None, [])
    figures = {}
    for t in thresholds:
        passing = scores_arr >= t
        hits = int(labels_arr[passing].sum())
        figures[t] = ThresholdFigures(
            precision=hits / int(passing.sum()) if passing.any() else None,
            recall=hits / relevant_total if relevant_total else 0.0,
            results_per_query=int(passing.sum()) / len(qrels) if qrels else 0.0,
            passing=int(passing.sum()),
        )
    return CalibrationReport(ece, len(qrels), len(scores), table, figures)
