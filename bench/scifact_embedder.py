"""SciFact: Retune's embedder job with default params, train split -> official test, full corpus.

    .venv/bin/python -m bench.scifact_embedder [--keep DIR]   # about an hour on a 2-core CPU

Runs the same engine a job runs (app.training.embedder.train_embedder), with `EmbedderParams()`
defaults: checkpoint and calibration chosen on the validation queries (10% of train), the base model at
step 0 and the chosen one at the end evaluated on all 300 test
queries against all 5,183 documents (exact FAISS inner product, pytrec_eval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.training.data import EvalSpec
from app.training.params import EmbedderParams
from bench.common import run_embedder_job, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help="JSON overrides of the default params")
    parser.add_argument("--name", default="scifact_embedder")
    parser.add_argument("--keep", type=Path, help="copy the fine-tuned model here")
    args = parser.parse_args()
    params = EmbedderParams(**json.loads(args.params))
    result = run_embedder_job("scifact", EvalSpec(split="test"), params, keep=args.keep)
    write_results(
        args.name,
        {
            "data": "SciFact train (809 queries: 10% of them validation, by seed) -> official test (300 queries), "
            "full corpus (5,183 docs)",
            **result,
            "reference_hand_made_run_ndcg@10": 0.7028,
        },
    )


if __name__ == "__main__":
    main()
