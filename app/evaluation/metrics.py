"""nDCG@10, Recall@100 and MRR@10 computed by pytrec_eval (trec_eval's own code).

Two things trec_eval does not do for us, and which would otherwise make numbers look better
than they are:
- a judged query for which the system returned nothing is skipped by trec_eval; here it counts
  as 0, so a model cannot gain by failing on hard queries;
- ``recip_rank`` looks at the whole ranking; MRR@10 is computed on the run cut to its top 10.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytrec_eval

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

HEADLINE_METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _top(ranking: Mapping[str, float], k: int) -> dict[str, float]:
    # trec_eval ranks by score, then by doc id descending; sorting the same way keeps the cut exact.
    ordered = sorted(ranking.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return {doc: float(score) for doc, score in ordered[:k]}


def per_query_metrics(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """The headline metrics of every query in ``qrels`` that has a relevant document (0 where the run is empty)."""
    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    if not judged:
        raise ValueError("no query in the qrels has a relevant document")
    full_run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    cut_run = {q: _top(docs, 10) for q, docs in full_run.items()}

    per_query_full = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(
        {q: d for q, d in full_run.items() if d}
    )
    per_query_cut = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(
        {q: d for q, d in cut_run.items() if d}
    )
    return {
        q: {
            "ndcg@10": per_query_full.get(q, {}).get("ndcg_cut_10", 0.0),
            "recall@100": per_query_full.get(q, {}).get("recall_100", 0.0),
            "mrr@10": per_query_cut.get(q, {}).get("recip_rank", 0.0),
        }
        for q in judged
    }


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The run's figures from :func:`per_query_metrics`' output (so a caller needing both scores the run once)."""
    return {name: sum(m[name] for m in per_query.values()) / len(per_query) for name in HEADLINE_METRICS}


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean metrics over every query in ``qrels`` that has at least one relevant document."""
    return mean_metrics(per_query_metrics(qrels, run))


def paired_change(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]], metric: str = "ndcg@10"
) -> dict[str, float]:
    """Mean per-query change of ``metric`` from ``before`` to ``after`` and its standard error.

    Two systems scored on the same queries differ less from each other than from query to query: the
    paired standard error says whether a change is larger than the noise of that query set.
    """
    deltas = [after[q][metric] - before[q][metric] for q in before]
    n = len(deltas)
    mean = sum(deltas) / n
    variance = sum((d - mean) ** 2 for d in deltas) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "stderr": (variance / n) ** 0.5, "queries": float(n)}
