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
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from app.training.params import RerankerParams
from bench.common import scifact_validation_split, write_results
from bench.cranfield_reranker import run

CPU_BUDGET = {"epochs": 1.0, "recall_k": 30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help=f"JSON reranker params over {json.dumps(CPU_BUDGET)}")
    parser.add_argument("--name", default="scifact_reranker")
    parser.add_argument("--keep", type=Path, help="copy the best model to KEEP/listwise")
    args = parser.parse_args()
    params = RerankerParams(**(CPU_BUDGET | json.loads(args.params)))

    data = scifact_validation_split()
    print(f"{len(data.train_qrels)} training queries, {len(data.eval_qrels)} validation", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        listwise = run("listwise", params, data, Path(tmp), args.keep)
    curve = listwise["best_model_fusion_curve"]
    chosen = max(curve, key=lambda w: (curve[w]["ndcg@10"], -abs(float(w) - 0.5)))
    write_results(
        args.name,
        {
            "data": "SciFact train (5,183 docs), 10% of its queries set aside by seed 42 as validation; "
            "first stage: bundled all-MiniLM-L6-v2, exact FAISS IP over the full corpus",
            "train_queries": len(data.train_qrels),
            "validation_queries": len(data.eval_qrels),
            "listwise": listwise,
            # For the test run: the weight with the best validation nDCG@10 (ties: nearest 0.5).
            "validation_chosen_first_stage_weight": float(chosen),
        },
    )


if __name__ == "__main__":
    main()
