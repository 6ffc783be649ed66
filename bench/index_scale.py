"""Index scale: build time, memory, latency and recall@10 of each VectorIndex kind on 1M vectors.

    .venv/bin/python -m bench.index_scale                 # 1,000,000 x 384-d, flat + hnsw + ivf
    .venv/bin/python -m bench.index_scale --n 20000 --queries 50 --name index_scale_smoke

Run it alone: nothing else may be using the CPU, or the timings mean nothing. At 1M it takes a
long time on a 2-core CPU (the HNSW build dominates) and needs a few GB of RAM.

Measures the service's own index class (app.retrieval.vector_index.VectorIndex) with its own
parameters. For each kind: build time (VectorIndex.build), memory_bytes(), single-query latency
(one query per search call, k=10; p50 and p95), batch throughput (all queries in one call) and
recall@10 against exact search (faiss IndexFlatIP through VectorIndex "flat", computed once before
the kinds are measured). The process's peak resident memory over the whole run is also reported.

Data: a seeded Gaussian mixture, not the uniform-on-the-sphere worst case. ``CENTRES`` random unit
centres; each point is a uniformly chosen centre plus Gaussian noise whose variance along the i-th
axis of a random orthonormal basis (shared by all clusters) decays as 1/(i+1), scaled so that the
expected squared noise norm is ``NOISE**2``; the point is then L2-normalised (float32). The decaying
spectrum gives the low effective dimension of real sentence embeddings. Queries are fresh draws from
the same mixture (a separate random stream), so they are not members of the corpus.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from typing import Any

import faiss
import numpy as np

from app.retrieval import vector_index as vi
from app.retrieval.vector_index import VectorIndex
from bench.common import write_results

K = 10
CENTRES = 1_000
NOISE = 1.0
CHUNK = 50_000
WARMUP = 5


class Mixture:
    """The seeded Gaussian mixture the corpus and the queries are drawn from."""

    def __init__(self, dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((CENTRES, dim))
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spectrum = 1.0 / np.arange(1, dim + 1)
        scales = NOISE * np.sqrt(spectrum / spectrum.sum())
        self.mixing = (scales[:, None] * basis.T).astype(np.float32)  # noise = z @ mixing
        self.dim = dim

    def sample(self, n: int, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
        """Draw ``n`` normalised float32 points, in chunks, into ``out`` (allocated if not given)."""
        out = np.empty((n, self.dim), dtype=np.float32) if out is None else out
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            z = rng.standard_normal((stop - start, self.dim), dtype=np.float32)
            chunk = self.centres[rng.integers(0, CENTRES, stop - start)] + z @ self.mixing
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            out[start:stop] = chunk
        return out


def top_ids(results: list[list[tuple[str, float]]]) -> list[set[str]]:
    return [{doc_id for doc_id, _ in hits} for hits in results]


def recall_at_k(results: list[list[tuple[str, float]]], truth: list[set[str]]) -> float:
    return float(np.mean([len(got & exact) / K for got, exact in zip(top_ids(results), truth, strict=True)]))


def sweep(index: VectorIndex, queries: np.ndarray, truth: list[set[str]]) -> list[dict[str, Any]]:
    """The search-time knob (HNSW efSearch, IVF nprobe) against recall and latency, to choose defaults from."""
    if index.kind == "flat":
        return []
    values = (32, 64, 128, 256, 512) if index.kind == "hnsw" else (16, 32, 64, 128, 256, 512)
    saved_ef, saved_nprobe = vi.HNSW_EF_SEARCH, getattr(index.index, "nprobe", None)
    points = []
    try:
        for value in values:
            if index.kind == "hnsw":
                vi.HNSW_EF_SEARCH = value  # VectorIndex.search applies it on every call
            else:
                index.index.nprobe = value
            latencies, hits = [], []
            for q in queries:
                started = time.perf_counter()
                hits.extend(index.search(q[None, :], K))
                latencies.append((time.perf_counter() - started) * 1000)
            knob = "efSearch" if index.kind == "hnsw" else "nprobe"
            points.append(
                {knob: value, "latency_ms_p50": round(float(np.percentile(latencies, 50)), 3),
                 "recall@10": round(recall_at_k(hits, truth), 4)}
            )  # fmt: skip
            print(f"[{index.kind}] {points[-1]}", flush=True)
    finally:
        vi.HNSW_EF_SEARCH = saved_ef
        if saved_nprobe is not None:
            index.index.nprobe = saved_nprobe
    return points


def measure(
    kind: vi.IndexKind, corpus: np.ndarray, doc_ids: list[str], queries: np.ndarray, truth: list[set[str]]
) -> dict[str, Any]:
    """Build one index of ``kind`` and measure it; returns its figures."""
    print(f"[{kind}] building on {len(doc_ids):,} vectors ...", flush=True)
    started = time.perf_counter()
    index = VectorIndex.build(corpus, doc_ids, kind)
    build_s = time.perf_counter() - started
    print(f"[{kind}] built in {build_s:.1f}s", flush=True)

    for q in queries[:WARMUP]:
        index.search(q[None, :], K)
    latencies = []
    single = []
    for q in queries:
        started = time.perf_counter()
        single.extend(index.search(q[None, :], K))
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    batch = index.search(queries, K)
    batch_s = time.perf_counter() - started

    figures: dict[str, Any] = {
        "build_seconds": round(build_s, 2),
        "memory_bytes": index.memory_bytes(),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 3),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 3),
        "batch_queries_per_second": round(len(queries) / batch_s, 1),
        "recall@10": round(recall_at_k(single, truth), 4),
        "recall@10_batch": round(recall_at_k(batch, truth), 4),
    }
    if kind == "ivf":
        figures["nlist"] = int(index.index.nlist)
    figures["sweep"] = sweep(index, queries, truth)
    print(f"[{kind}] {figures}", flush=True)
    del index
    gc.collect()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="index_scale")
    args = parser.parse_args()
    kinds = [vi.choose_kind(k.strip(), args.n) for k in args.kinds.split(",") if k.strip()]

    started = time.perf_counter()
    mixture = Mixture(args.dim, args.seed)
    print(f"generating {args.n:,} x {args.dim} vectors ...", flush=True)
    corpus = mixture.sample(args.n, np.random.default_rng([args.seed, 1]))
    queries = mixture.sample(args.queries, np.random.default_rng([args.seed, 2]))
    doc_ids = [str(i) for i in range(args.n)]
    print(f"generated in {time.perf_counter() - started:.1f}s", flush=True)

    print("exact ground truth (flat) ...", flush=True)
    exact = VectorIndex.build(corpus, doc_ids, "flat")
    exact_hits = exact.search(queries, K)
    del exact
    gc.collect()
    truth = top_ids(exact_hits)
    exact_scores = np.array([[s for _, s in hits] for hits in exact_hits])

    results = {kind: measure(kind, corpus, doc_ids, queries, truth) for kind in kinds}
    write_results(
        args.name,
        {
            "data": {
                "n": args.n,
                "dim": args.dim,
                "queries": args.queries,
                "seed": args.seed,
                "distribution": (
                    f"Gaussian mixture: {CENTRES} random unit centres + Gaussian noise with a 1/(i+1) variance "
                    f"spectrum in a random orthonormal basis, expected noise norm {NOISE}, L2-normalised float32; "
                    "queries are fresh draws from the same mixture"
                ),
                "exact_top1_cosine_mean": round(float(exact_scores[:, 0].mean()), 4),
                "exact_top10_cosine_mean": round(float(exact_scores[:, K - 1].mean()), 4),
            },
            "k": K,
            "params": {
                "HNSW_M": vi.HNSW_M,
                "HNSW_EF_CONSTRUCTION": vi.HNSW_EF_CONSTRUCTION,
                "HNSW_EF_SEARCH": vi.HNSW_EF_SEARCH,
                "IVF_NPROBE": vi.IVF_NPROBE,
                "IVF_NLIST": results.get("ivf", {}).get("nlist"),
            },
            "faiss": {"version": faiss.__version__, "omp_threads": faiss.omp_get_max_threads()},
            "results": results,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
