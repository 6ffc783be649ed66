"""financial-qa-10k: a Retune embedder job, 10% of the queries held out by seed; base vs fine-tuned.

    .venv/bin/python -m bench.finqa_embedder                       # ~30 min on a 2-core CPU
    .venv/bin/python -m bench.finqa_embedder --max-train-queries 0  # all 5,668 training queries (hours on CPU)

The whole set is one 'train' qrels split (6,298 questions, one positive passage each); Retune holds
10% of the questions out by seed and never trains on them. On a 2-core CPU the default samples
1,000 of the remaining questions for training (one epoch) and evaluates against the full corpus;
the results file says what was used.
"""

from __future__ import annotations

import argparse
import json

from app.training.data import EvalSpec
from app.training.params import EmbedderParams
from bench.common import run_embedder_job, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-train-queries", type=int, default=1000, help="0: all")
    parser.add_argument("--params", default='{"epochs": 1.0}', help="JSON overrides of the default params")
    parser.add_argument("--name", default="finqa_embedder")
    args = parser.parse_args()
    overrides = json.loads(args.params) | {"max_train_queries": args.max_train_queries or None}
    params = EmbedderParams(**overrides)
    result = run_embedder_job("financial-qa-10k", EvalSpec(holdout_fraction=0.1, seed=42), params)
    write_results(
        args.name,
        {"data": "financial-qa-10k (6,756 passages, 6,298 questions), 10% of questions held out by seed 42"} | result,
    )


if __name__ == "__main__":
    main()
