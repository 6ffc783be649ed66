"""Does an embedder job train as well with the memory-saving settings? Held-out nDCG@10 after a short job.

    .venv/bin/python -m bench.train_memory_quality [--steps 20] [--seeds 1 2] [--variants JSON]

Validation data only: SciFact train with 10% of its queries set aside by seed 42 (the official test
queries are never touched), the held-out queries searched among their judged abstracts and a seeded
sample of the others (``max_corpus_docs``). Each variant is a real embedder job
(``app.training.embedder.train_embedder``) of ``--steps`` optimiser steps at the default params plus
the variant's overrides, once per seed; the figure is the fine-tuned nDCG@10 per variant and seed, and
the mean difference to the first variant beside the seed spread.
"""

from __future__ import annotations

import argparse
import json
import statistics

from app.training.data import EvalSpec
from app.training.params import EmbedderParams
from bench.common import run_embedder_job, write_results

VARIANTS = {
    "before: attention dropout 0.1, uncached loss": {"attention_dropout": 0.1, "cached_loss": False},
    "now: attention dropout 0, cached loss (mini-batch 16)": {
        "attention_dropout": 0.0,
        "cached_loss": True,
        "mini_batch_size": 16,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--max-train-queries", type=int, default=400)
    parser.add_argument("--max-corpus-docs", type=int, default=800)
    parser.add_argument("--variants", type=json.loads, default=VARIANTS, help="JSON {name: param overrides}")
    parser.add_argument("--name", default="train_memory_quality", help="results file name")
    args = parser.parse_args()
    spec = EvalSpec(holdout_fraction=0.1, seed=42, max_corpus_docs=args.max_corpus_docs)
    runs: dict[str, dict[str, dict]] = {}
    for name, overrides in args.variants.items():
        for seed in args.seeds:
            params = EmbedderParams(
                max_steps=args.steps, max_train_queries=args.max_train_queries, seed=seed, logging_steps=1, **overrides
            )
            result = run_embedder_job("scifact", spec, params)
            runs.setdefault(name, {})[str(seed)] = {
                k: result[k] for k in ("base", "fine_tuned", "steps", "wall_seconds")
            }
            print(name, seed, result["fine_tuned"], flush=True)
    write_results(args.name, {"setup": vars(args) | {"variants": args.variants}, "runs": runs,
                                           "summary": summary(runs)})  # fmt: skip


def summary(runs: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Per variant: mean fine-tuned nDCG@10, its spread over seeds, mean seconds per job."""
    out = {}
    for name, by_seed in runs.items():
        values = [r["fine_tuned"]["ndcg@10"] for r in by_seed.values()]
        out[name] = {
            "ndcg@10_mean": round(statistics.fmean(values), 4),
            "ndcg@10_seed_range": round(max(values) - min(values), 4),
            "wall_seconds_mean": round(statistics.fmean(r["wall_seconds"] for r in by_seed.values()), 1),
        }
    return out


if __name__ == "__main__":
    main()
