"""Cranfield: a default reranker job, every choice on validation, scored once on held-out test queries.

    .venv/bin/python -m bench.cranfield_validated
    .venv/bin/python -m bench.cranfield_validated --base-model R --name cranfield_validated_from_scifact

Cranfield has no official split. The 225 queries are split 80/20 by seed 42 (the split every Cranfield
benchmark shares): the 45 held out are the **test** queries. The job sets aside its own **validation**
queries from the other 180 (10% by seed, at least 20), where it chooses the checkpoint, the first-stage
weight (``auto``) and fits the calibration of the served score. The test queries are scored twice:
the bi-encoder alone (the base) and the chosen reranker as search serves it, with the paired verdict and
the calibration report (ECE and threshold precision over each query's served top 10), calibrated and
with the uncalibrated sigmoid side by side. Relevant means grade >= ``relevance_min_grade`` (default 1).

``--base-model``: start from a trained reranker instead of the bundled MiniLM with a new head, e.g. the
one ``bench.scifact_reranker --keep`` trained on SciFact (pooling a second dataset's judgements).
"""

from __future__ import annotations

import argparse
import json

from app.training.params import RerankerParams
from bench.common import cranfield_heldout_split, run_reranker_job, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="{}", help="JSON reranker params over the job's defaults")
    parser.add_argument("--name", default="cranfield_validated", help="results file name")
    parser.add_argument("--base-model", help="start from this reranker (e.g. bench.scifact_reranker --keep's)")
    args = parser.parse_args()
    params = RerankerParams(**json.loads(args.params))
    result = run_reranker_job(cranfield_heldout_split(), params, base_model=args.base_model)
    write_results(
        args.name,
        {
            "data": "Cranfield (1,400 docs, graded 0-4): 45 test queries held out (80/20 by seed 42); the job's "
            "validation queries set aside from the other 180 by seed; first stage: bundled all-MiniLM-L6-v2, "
            "exact FAISS IP over the full corpus",
            **result,
        },
    )


if __name__ == "__main__":
    main()
