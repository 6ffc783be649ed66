"""Runtime backends side by side on SciFact: embedding throughput, query latency and the 1% gate's figures.

    .venv/bin/python -m bench.runtime_backends                  # ~15 min on the 2-core CPU, one thread

The bundled all-MiniLM-L6-v2 (copied: exports are written into the model folder) on each backend of
app.retrieval.backends, in one process, on the same thread count (``--threads``):

- throughput: ``--passages`` SciFact passages encoded in batches of 32, ``--rounds`` times in rotating
  backend order (drift of the machine falls on all alike); the median passages/s, and its ratio to torch fp32;
- query latency: each test query encoded alone, p50 / p95;
- quality, as the gate measures it: the 300 official test queries searched over their judged documents
  plus ``--distractors`` others, nDCG@10 paired against torch fp32 with the 95% bootstrap interval, and
  whether the change passes the 1% gate (``app.evaluation.backend_gate.passes``);
- the export's build time and size on disk.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.evaluation.backend_gate import DEFAULT_TOLERANCE, GATE_METRIC, passes
from app.evaluation.retrieval import evaluate_embedder
from app.evaluation.verdict import judge
from app.retrieval.backends.loading import apply_backend, build_export, export_dir
from app.retrieval.backends.spec import BackendUnavailable, parse_backend
from app.retrieval.backends.torch_backend import cpu_has_bf16
from app.retrieval.embedder import EmbedderConfig, encode_texts, load_embedder, passage_text
from app.services.models import bundled_model_path
from bench.common import percentiles_ms, rotating_rounds, scifact_test_split, write_results

BACKENDS = ("torch-fp32", "torch-int8", "torch-bf16", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")
BATCH = 32


def _slice(distractors: int, seed: int = 0):
    data = scifact_test_split()
    judged = {d for docs in data.eval_qrels.values() for d in docs}
    others = random.Random(seed).sample(sorted(set(data.corpus) - judged), distractors)
    corpus = {d: data.corpus[d] for d in sorted(judged | set(others))}
    return corpus, data.eval_queries, data.eval_qrels


def _load(folder: Path, label: str, threads: int) -> Any:
    backend = parse_backend(label)
    started = time.perf_counter()
    build_export(folder, backend, "embedder", lambda: load_embedder(str(folder), "cpu"))
    built = time.perf_counter() - started
    model = apply_backend(load_embedder(str(folder), "cpu"), folder, backend, "embedder", threads)
    target = export_dir(folder, backend)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.is_dir() else 0
    return model, {"export_seconds": round(built, 1), "export_mb": round(size / 1e6, 1)}


def _throughput(models: dict[str, Any], passages: list[str], rounds: int) -> dict[str, float]:
    def timed(label: str) -> float:
        started = time.perf_counter()
        encode_texts(models[label], passages, True, BATCH, task="document")
        return time.perf_counter() - started

    seconds = rotating_rounds(list(models), rounds, timed)
    return {label: len(passages) / statistics.median(times) for label, times in seconds.items()}


def _latency(model: Any, queries: list[str]) -> dict[str, float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        encode_texts(model, [query], True, 1, task="query")
        times.append(time.perf_counter() - started)
    return percentiles_ms(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distractors", type=int, default=500)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    corpus, queries, qrels = _slice(args.distractors)
    passages = [passage_text(d) for d in list(corpus.values())[: args.passages]]
    folder = Path(tempfile.mkdtemp(prefix="retune-backends-")) / "minilm"
    shutil.copytree(bundled_model_path(), folder)
    models, rows = {}, {}
    for label in args.backends.split(","):
        if label == "torch-bf16" and not cpu_has_bf16():
            rows[label] = {"skipped": "no AVX512-BF16 or AMX on this CPU"}
            continue
        try:
            models[label], rows[label] = _load(folder, label, args.threads)
        except BackendUnavailable as exc:
            rows[label] = {"skipped": str(exc)}
    speeds = _throughput(models, passages, args.rounds)
    reference = evaluate_embedder(models["torch-fp32"], EmbedderConfig(), corpus, queries, qrels).per_query or {}
    for label, model in models.items():
        per_query = reference if label == "torch-fp32" else evaluate_embedder(
            model, EmbedderConfig(), corpus, queries, qrels).per_query or {}  # fmt: skip
        verdict = judge(reference, per_query, GATE_METRIC, split="test")
        rows[label] |= {
            "passages_per_s": round(speeds[label], 1),
            "speed_vs_torch_fp32": round(speeds[label] / speeds["torch-fp32"], 2),
            "query_latency": _latency(model, [queries[q] for q in list(qrels)[:100]]),
            GATE_METRIC: round(verdict.final, 4),
            "paired_change": round(verdict.delta, 4),
            "ci95": [round(verdict.ci_low, 4), round(verdict.ci_high, 4)],
            "passes_1pct_gate": passes(verdict, DEFAULT_TOLERANCE),
        }
    shutil.rmtree(folder.parent, ignore_errors=True)
    write_results(
        "runtime_backends",
        {
            "model": "all-MiniLM-L6-v2 (bundled)",
            "threads": args.threads,
            "throughput_passages": len(passages),
            "rounds": args.rounds,
            "quality_set": f"SciFact test: {len(qrels)} queries, {len(corpus)} documents (judged + {args.distractors})",
            "backends": rows,
        },
    )


if __name__ == "__main__":
    main()
