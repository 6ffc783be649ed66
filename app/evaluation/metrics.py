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


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean metrics over every query in ``qrels`` that has at least one relevant document."""
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
    n = len(judged)
    return {
        "ndcg@10": sum(m["ndcg_cut_10"] for m in per_query_full.values()) / n,
        "recall@100": sum(m["recall_100"] for m in per_query_full.values()) / n,
        "mrr@10": sum(m["recip_rank"] for m in per_query_cut.values()) / n,
    }
