"""SciFact: a Retune reranker trained on SciFact train, chosen on validation queries, for the test.

    .venv/bin/python -m bench.scifact_reranker --keep /tmp/keep    # ~1 h on the 2-core CPU
    .venv/bin/python -m bench.reranker_int8 --dataset scifact --model /tmp/keep/listwise \\
        --recall-k 100 --first-stage-weight W                      # the test figures, fp32 and int8

10% of the training queries (seed 42) are set aside as validation: the reranker job evaluates on
them (best checkpoint, collapse watch) and the fusion curve of its best model is read on them, so
the first-stage weight ``W`` for the test is chosen without touching a test query. The official
test queries are scored only by ``bench.reranker_int8 --dataset scifact``, which reranks the first
stage's top 100 over the full corpus with the fp32 and the int8 model in one run.

The defaults are what a 2-core CPU affords (one epoch, validation over the top 30); the first stage
is the bundled all-MiniLM-L6-v2, not a fine-tuned embedder (``candidate_model`` in ``--params``).

    .venv/bin/python -m bench.scifact_reranker --validate /tmp/keep/listwise --recall-k 100

re-reads a kept model's fusion curve on the same validation queries at another ``recall_k`` (the
one the test reranks: a weight chosen over the top 30 need not suit the top 100), no training.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from app.evaluation.retrieval import fusion_curve, weight_of_best
from app.training.data import PreparedData
from app.training.params import RerankerParams
from bench.common import first_stage_and_reranked, scifact_validation_split, write_results
from bench.cranfield_reranker import run

CPU_BUDGET = {"epochs": 1.0, "recall_k": 30}


def validation_curve(model_dir: Path, data: PreparedData, recall_k: int) -> dict:
    """A kept reranker's fused metrics at every weight on the validation queries' top ``recall_k``."""
    first, reranked = first_stage_and_reranked(model_dir, data, recall_k, RerankerParams().max_length)
    curve = fusion_curve(first.run, reranked.run, data.eval_qrels, recall_k)
    return {
        "recall_k": recall_k,
        "first_stage": first.metrics,
        "reranked": reranked.metrics | {"score_std": reranked.score_std},
        "fusion_curve": curve,
        "validation_chosen_first_stage_weight": weight_of_best(curve, "ndcg@10"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help=f"JSON reranker params over {json.dumps(CPU_BUDGET)}")
    parser.add_argument("--name", help="results file (default: scifact_reranker, or scifact_reranker_validation)")
    parser.add_argument("--keep", type=Path, help="copy the best model to KEEP/listwise")
    parser.add_argument("--validate", type=Path, help="no training: this kept model's validation curve")
    parser.add_argument("--recall-k", type=int, default=100, help="with --validate")
    args = parser.parse_args()
    params = RerankerParams(**(CPU_BUDGET | json.loads(args.params)))

    data = scifact_validation_split()
    if args.validate:
        name = args.name or "scifact_reranker_validation"
        write_results(name, {"model": str(args.validate), **validation_curve(args.validate, data, args.recall_k)})
        return
    print(f"{len(data.train_qrels)} training queries, {len(data.eval_qrels)} validation", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        listwise = run("listwise", params, data, Path(tmp), args.keep)
    curve = listwise["best_model_fusion_curve"]
    write_results(
        args.name or "scifact_reranker",
        {
            "data": "SciFact train (5,183 docs), 10% of its queries set aside by seed 42 as validation; "
            "first stage: bundled all-MiniLM-L6-v2, exact FAISS IP over the full corpus",
            "train_queries": len(data.train_qrels),
            "validation_queries": len(data.eval_qrels),
            "listwise": listwise,
            # For the test run: the weight with the best validation nDCG@10 (ties: nearest 0.5).
            "validation_chosen_first_stage_weight": weight_of_best(curve, "ndcg@10"),
        },
    )


if __name__ == "__main__":
    main()
