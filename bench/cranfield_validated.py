"""Cranfield: the listwise reranker with every choice made on validation queries, scored once on the test.

    .venv/bin/python -m bench.cranfield_validated        # ~30 min on the 2-core CPU
    .venv/bin/python -m bench.cranfield_validated --base-model /tmp/keep/listwise --name NAME

``bench.cranfield_reranker`` evaluates on the 45 held-out queries (80/20 by seed 42) and keeps its
fusion weight fixed at 0.5: its weight curve peaks near 0.8, but a weight read off those queries
cannot be reported on them. Here the 180 training queries are split again (20% by seed 42):

- the reranker job trains on the other 144 and evaluates on the 36 validation queries, with
  ``first_stage_weight: auto`` (the grid weight best on them) and its best checkpoint chosen there;
- the best model then reranks the bi-encoder's top ``recall_k`` for the 45 held-out queries, once,
  fused at the weight chosen on validation. The bi-encoder alone on the same 45 queries is the bar;
  the change comes with its paired standard error over the queries.

``--base-model``: start from a trained reranker instead of the bundled MiniLM with a new head, e.g. the
one ``bench.scifact_reranker --keep`` trained on SciFact (pooling a second dataset's judgements).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from app.evaluation.metrics import mean_metrics, paired_change, per_query_metrics
from app.evaluation.retrieval import fuse_runs, fusion_curve
from app.evaluation.splits import holdout_split
from app.training.data import PreparedData
from app.training.params import RerankerParams
from bench.common import cranfield_heldout_split, first_stage_and_reranked, write_results
from bench.cranfield_reranker import run

# The recipe of the best earlier runs (docs/benchmarks.md, Cranfield), with the weight left to validation.
RECIPE = {"recall_k": 30, "epochs": 6, "eval_steps": 18, "first_stage_temperature": 0.05, "first_stage_weight": "auto"}


def validation_split(data: PreparedData, fraction: float = 0.2, seed: int = 42) -> PreparedData:
    """The training queries split again: the job trains on the rest and evaluates on these."""
    train_ids, validation_ids = holdout_split(data.train_qrels, fraction, seed)
    validation_texts = {data.train_queries[q] for q in validation_ids}
    train_ids = [q for q in train_ids if data.train_queries[q] not in validation_texts]
    return replace(
        data,
        train_queries={q: data.train_queries[q] for q in train_ids},
        train_qrels={q: data.train_qrels[q] for q in train_ids},
        eval_queries={q: data.train_queries[q] for q in validation_ids},
        eval_qrels={q: data.train_qrels[q] for q in validation_ids},
        eval_label=f"validation-{fraction:g}-seed{seed}",
    )


def test_figures(model_dir: Path, test: PreparedData, recall_k: int, weight: float, max_length: int) -> dict:
    """The held-out queries, once: the bi-encoder alone, the reranker alone, fused at ``weight``."""
    first, reranked = first_stage_and_reranked(model_dir, test, recall_k, max_length)
    per_query = {
        "first_stage": per_query_metrics(test.eval_qrels, first.run),
        "reranked": per_query_metrics(test.eval_qrels, reranked.run),
        "fused": per_query_metrics(test.eval_qrels, fuse_runs(first.run, reranked.run, recall_k, weight)),
    }
    return {
        "queries": len(first.run),
        "first_stage_weight": weight,
        "first_stage": mean_metrics(per_query["first_stage"]),
        "reranked": mean_metrics(per_query["reranked"]) | {"score_std": reranked.score_std},
        "fused": mean_metrics(per_query["fused"]),
        # Mean per-query change over the bi-encoder alone and its paired standard error.
        "change_over_first_stage": {
            order: paired_change(per_query["first_stage"], per_query[order]) for order in ("reranked", "fused")
        },
        # For the record only: a weight read off this curve would be chosen on the test.
        "fusion_curve": fusion_curve(first.run, reranked.run, test.eval_qrels, recall_k),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help=f"JSON reranker params over {json.dumps(RECIPE)}")
    parser.add_argument("--name", default="cranfield_validated")
    parser.add_argument("--base-model", help="start from this reranker (e.g. bench.scifact_reranker --keep's)")
    args = parser.parse_args()
    params = RerankerParams(**(RECIPE | json.loads(args.params)))

    test = cranfield_heldout_split()
    inner = validation_split(test)
    print(
        f"{len(inner.train_qrels)} training, {len(inner.eval_qrels)} validation, {len(test.eval_qrels)} test queries",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        listwise = run("listwise", params, inner, Path(tmp), Path(tmp) / "kept", args.base_model)
        best = next(e for e in listwise["evaluations"] if e["step"] == listwise["best_step"])
        weight = best["fused"]["first_stage_weight"]
        figures = test_figures(Path(tmp) / "kept" / "listwise", test, params.recall_k, weight, params.max_length)
    write_results(
        args.name,
        {
            "data": "Cranfield (1,400 docs, graded 0-4): the 80/20 split by seed 42 of bench.cranfield_reranker, "
            "its 180 training queries split again 80/20 by seed 42 into training and validation; first stage: "
            "bundled all-MiniLM-L6-v2, exact FAISS IP over the full corpus",
            "train_queries": len(inner.train_qrels),
            "validation_queries": len(inner.eval_qrels),
            "test_queries": len(test.eval_qrels),
            "base_model": args.base_model or "bundled all-MiniLM-L6-v2 with a new head",
            "validation": listwise,
            "validation_chosen_first_stage_weight": weight,
            "test": figures,
        },
    )


if __name__ == "__main__":
    main()
