"""Cranfield (graded 0-4): the listwise reranker vs the naive setup, against the bi-encoder alone.

    .venv/bin/python -m bench.cranfield_reranker
    .venv/bin/python -m bench.cranfield_reranker --listwise-only --params '{"recall_k": 30, "epochs": 1}'

Queries are split 80/20 by seed (the same split for both runs: 45 test queries); each job sets aside
its validation queries from the rest, and the bi-encoder (bundled MiniLM) gives each query's top
``recall_k`` candidates, which each reranker reranks (``bench.common.run_reranker_job``).

- listwise: Retune's default reranker job (ListNet against softmax(grade x label_scale)).
- naive: every grade > 0 treated as a positive, FlagEmbedding's group softmax (1 positive among
  group_size), the setup behind the reported collapse; given the same number of optimiser steps.

Both runs keep the collapse watch's figures (score spread, share of positive logits, flag).
"""

from __future__ import annotations

import argparse
import json

from app.training.params import RerankerParams
from bench.common import cranfield_heldout_split, run_reranker_job, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="{}", help="JSON overrides for both runs")
    parser.add_argument("--name", default="cranfield_reranker", help="results file name")
    parser.add_argument("--listwise-only", action="store_true", help="skip the naive run (a quicker probe)")
    args = parser.parse_args()
    overrides = json.loads(args.params)

    data = cranfield_heldout_split()
    listwise = run_reranker_job(data, RerankerParams(**overrides))
    naive = None
    if not args.listwise_only:
        naive_params = overrides | {"loss": "group_softmax", "max_steps": listwise["steps"]}
        naive = run_reranker_job(data, RerankerParams(**naive_params))
    write_results(
        args.name,
        {
            "data": "Cranfield (1,400 docs, graded 0-4), queries split 80/20 by seed 42; first stage: bundled "
            "all-MiniLM-L6-v2, exact FAISS IP over the full corpus",
            "listwise": listwise,
            **({"naive_group_softmax": naive} if naive else {}),
        },
    )


if __name__ == "__main__":
    main()
