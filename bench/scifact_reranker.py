"""SciFact two-stage: a default reranker job over a first stage's top 100, judged on the official test.

    .venv/bin/python -m bench.scifact_embedder --keep E                 # the fine-tuned first stage
    .venv/bin/python -m bench.scifact_reranker --candidate-model E

The reranker trains on SciFact train; the job sets aside 10% of those queries (by seed, at least 20)
as its **validation** queries, where it chooses the checkpoint and the first-stage weight and fits the
served score's calibration. The 300 official **test** queries are scored twice over the full corpus:
the first stage alone (the base) and the chosen reranker over its top ``recall_k`` (100), ordered as
search serves it (by calibrated P(relevant)), with the paired verdict and the calibration report
(calibrated and uncalibrated sigmoid side by side, each query's served top 10).

``--candidate-model``: the first stage (a kept embedder, used as its folder says); default the bundled
all-MiniLM-L6-v2. ``--keep R``: copy the chosen reranker to R.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.training.data import EvalSpec
from app.training.params import RerankerParams
from bench.common import run_reranker_job, shared_beir_split, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="{}", help="JSON reranker params over the job's defaults")
    parser.add_argument("--candidate-model", help="the first stage: a kept embedder (bench.scifact_embedder --keep)")
    parser.add_argument("--keep", type=Path, help="copy the chosen reranker here")
    parser.add_argument("--name", default="scifact_reranker", help="results file name")
    args = parser.parse_args()
    params = RerankerParams(**json.loads(args.params))
    data = shared_beir_split("scifact", EvalSpec(split="test"))
    result = run_reranker_job(data, params, candidate_model=args.candidate_model, keep=args.keep)
    write_results(
        args.name,
        {
            "data": "SciFact train (809 queries; the job's validation queries set aside from them by seed) -> "
            "official test (300 queries), full corpus (5,183 docs), exact FAISS IP first stage",
            **result,
        },
    )


if __name__ == "__main__":
    main()
