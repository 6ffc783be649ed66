"""How close to the CPU's peak does each runtime backend run the MiniLM reranker and embedder?

    .venv/bin/python -m bench.hardware_ceiling --threads 1 2       # ~15 min on the 2-core CPU

1. Peak: torch's dense matmul of two ``--size`` square matrices, median GFLOP/s of ``--repeats``, at
   fp32, bf16 and int8. int8 is measured twice: ``torch._int_mm`` (int8 x int8 -> int32, the raw kernel)
   and a dynamically quantised ``Linear`` (what the torch int8 backend runs, activations quantised per
   call); the higher of the two is the int8 peak.
2. Work: SciFact test queries (every 15th, ``--queries``), their top 100 by the bundled all-MiniLM-L6-v2
   (exact search over the full corpus); each (query, passage) pair's token length as the reranker reads it
   (cut at 256). FLOPs per pair at each length are counted by ``torch.utils.flop_counter.FlopCounterMode``
   (matmuls: linear layers and attention) on the body at batch 1; a batch costs its rows x the FLOPs at
   its longest row (padding), so the executed FLOPs of a length-sorted batching are reported beside the
   useful ones.
3. Achieved: a CrossEncoder from the bundled MiniLM with a fresh (untrained) one-logit head: its speed is
   a trained reranker's, its scores are not used. ``--pairs`` pairs sampled from those candidates are
   scored on each backend at batch 8 and 32, ``--rounds`` times in rotating order; pairs/s (median) x
   useful FLOPs per pair / the peak at the backend's dtype = the achieved share. The time is split into
   tokenising, the body's forward and the rest (sorting, numpy, sentence-transformers' glue). The embedder:
   the candidates' passages encoded in batches of 32 on each backend, the same way.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKENDS = ("torch-fp32", "torch-int8", "torch-bf16", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")
MAX_LENGTH = 256
RECALL_K = 100


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and CPU seconds (all of this process's threads) of ``fn()``. On a shared machine the CPU time is
    the figure: the time this process computed, not the time others held the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of ``repeats`` calls after a warm-up (kernels chosen, buffers allocated)."""
    fn()
    return statistics.median(_timed(fn)[1] for _ in range(repeats))


def gemm_peak(size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of one ``size`` x ``size`` x ``size`` matmul (2 n^3 FLOPs) at each dtype, on torch's threads."""
    import torch

    flops = 2 * size**3
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = {"fp32": flops / _median_seconds(lambda: a @ b, repeats) / 1e9}
    a16, b16 = a.bfloat16(), b.bfloat16()
    out["bf16"] = flops / _median_seconds(lambda: a16 @ b16, repeats) / 1e9
    a8 = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    b8 = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    out["int8_int_mm"] = flops / _median_seconds(lambda: torch._int_mm(a8, b8), repeats) / 1e9
    linear = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)), {torch.nn.Linear}, dtype=torch.qint8
    )
    with torch.no_grad():
        out["int8_dynamic_linear"] = flops / _median_seconds(lambda: linear(a), repeats) / 1e9
    out["int8"] = max(out["int8_int_mm"], out["int8_dynamic_linear"])
    return {k: round(v, 1) for k, v in out.items()}


def flops_at_lengths(hf_model: Any, lengths: set[int]) -> dict[int, int]:
    """FLOPs of one row of ``length`` tokens through ``hf_model`` (FlopCounterMode: matmuls, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    with torch.no_grad():
        for length in sorted(lengths):
            ids = torch.ones(1, length, dtype=torch.long)
            counter = FlopCounterMode(display=False)
            with counter:
                hf_model(input_ids=ids, attention_mask=ids, token_type_ids=torch.zeros_like(ids))
            counts[length] = counter.get_total_flops()
    return counts


def executed_flops(lengths: list[int], per_row: dict[int, int], batch: int) -> int:
    """FLOPs run when rows are sorted by length and batched: each row is padded to its batch's longest."""
    ordered = sorted(lengths, reverse=True)
    batches = (ordered[i : i + batch] for i in range(0, len(ordered), batch))
    return sum(per_row[chunk[0]] * len(chunk) for chunk in batches)


def candidates(queries: int, index_dir: Path | None) -> tuple[list[tuple[str, str]], list[str]]:
    """SciFact test queries' top 100 by the bundled embedder: the (query, passage) pairs a reranker scores.

    ``index_dir``: a built index of the bundled embedder over SciFact (a service's ``indexes/ID``), read
    instead of encoding the corpus again (the same vectors: same model, same passages)."""
    from app.evaluation.retrieval import evaluate_embedder
    from app.retrieval.embedder import EmbedderConfig, load_embedder, passage_text
    from app.services.models import bundled_model_path
    from bench.common import scifact_test_split

    data = scifact_test_split()
    ids = sorted(data.eval_qrels, key=int)
    picked = ids[:: max(1, len(ids) // queries)][:queries]
    config = EmbedderConfig()
    embedder = load_embedder(str(bundled_model_path()), "cpu", config.max_seq_length)
    qrels = {q: data.eval_qrels[q] for q in picked}
    if index_dir is None:
        run = evaluate_embedder(embedder, config, data.corpus, data.eval_queries, qrels, top_k=RECALL_K).run
    else:
        from app.retrieval.embedder import encode_texts
        from app.services.indexes import load_index_dir

        index, config = load_index_dir(index_dir)
        texts = [config.format_query(data.eval_queries[q]) for q in picked]
        hits = index.search(encode_texts(embedder, texts, config.normalize, task="query"), RECALL_K)
        run = {q: dict(h) for q, h in zip(picked, hits, strict=True)}
    pairs = []
    for qid in picked:
        top = sorted(run[qid].items(), key=lambda h: -h[1])[:RECALL_K]
        pairs += [(config.format_query(data.eval_queries[qid]), passage_text(data.corpus[d])) for d, _ in top]
    return pairs, sorted({p for _, p in pairs})


def _load(kind: str, folder: Path, label: str, threads: int) -> Any:
    from app.retrieval.backends.loading import apply_backend, build_export
    from app.retrieval.backends.spec import parse_backend
    from app.retrieval.embedder import load_embedder
    from app.retrieval.reranker import load_reranker

    def fresh() -> Any:
        if kind == "reranker":
            return load_reranker(str(folder), "cpu", MAX_LENGTH)
        return load_embedder(str(folder), "cpu", MAX_LENGTH)

    backend = parse_backend(label)
    build_export(folder, backend, kind, fresh)  # type: ignore[arg-type]
    return apply_backend(fresh(), folder, backend, kind, threads)  # type: ignore[arg-type]


def stage_split(model: Any, pairs: list[tuple[str, str]], batch: int) -> dict[str, float]:
    """CPU seconds spent tokenising and in the body's forward for ``pairs``, batched as predict batches them."""
    import torch

    from app.retrieval.backends.base import body

    module = body(model)
    ordered = sorted(pairs, key=lambda p: -len(p[0]) - len(p[1]))
    tokenize = forward = 0.0
    with torch.no_grad():
        for i in range(0, len(ordered), batch):
            chunk = ordered[i : i + batch]
            started = time.process_time()
            features = model.tokenizer(
                [p[0] for p in chunk], [p[1] for p in chunk], padding=True, truncation="longest_first",
                max_length=MAX_LENGTH, return_tensors="pt",
            )  # fmt: skip
            tokenized = time.process_time()
            module.model(**features)
            forward += time.process_time() - tokenized
            tokenize += tokenized - started
    return {"tokenize_s": tokenize, "forward_s": forward}


def _rotating(labels: list[str], rounds: int, run: Callable[[str], tuple[float, float]]) -> dict[str, list[float]]:
    """Median (wall, CPU) seconds of ``run(label)`` over ``rounds``, the order rotating so drift falls on all alike."""
    from bench.common import rotating_rounds

    seconds = rotating_rounds(labels, rounds, run)
    return {label: [statistics.median(t[i] for t in times) for i in (0, 1)] for label, times in seconds.items()}


def config_flops(config: Any, length: int) -> int:
    """The same count by hand from the config, as a check: 2mnk per linear layer, QK^T and AV per layer."""
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear = 2 * length * (4 * h * h + 2 * h * ffn)
    attention = 2 * 2 * length * length * h
    return layers * (linear + attention)


def _shares(seconds: list[float], rows: int, useful: int, executed: int, peak: float) -> dict[str, float]:
    """Rows per CPU-second (and per wall second), and the useful / executed FLOPs per CPU-second over the peak."""
    wall, cpu = seconds
    return {
        "per_s": round(rows / cpu, 1),
        "per_wall_s": round(rows / wall, 1),
        "useful_gflops": round(useful / cpu / 1e9, 1),
        "share_of_peak": round(useful / cpu / 1e9 / peak, 3),
        "executed_share_of_peak": round(executed / cpu / 1e9 / peak, 3),
    }


def _models(kind: str, folder: Path, labels: list[str], threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    from app.retrieval.backends.spec import BackendUnavailable
    from app.retrieval.backends.torch_backend import cpu_has_bf16

    models, skipped = {}, {}
    for label in labels:
        if label == "torch-bf16" and not cpu_has_bf16():
            skipped[label] = "no AVX512-BF16 or AMX on this CPU"
            continue
        try:
            models[label] = _load(kind, folder, label, threads)
        except BackendUnavailable as exc:
            skipped[label] = str(exc)
    return models, skipped


def reranker_rows(
    folder: Path, labels: list[str], threads: int, pairs: list[tuple[str, str]], lengths: list[int],
    per_row: dict[int, int], peak: dict[str, float], rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """Pairs/s and share of peak for each backend at batch 8 and 32; the stage split at batch 8."""
    from app.retrieval.reranker import pair_logits

    models, rows = _models("reranker", folder, labels, threads)
    out: dict[str, Any] = {label: {"skipped": why} for label, why in rows.items()}
    useful = sum(per_row[n] for n in lengths)
    for label in models:
        out[label] = {"dtype": label.split("-")[1]}
    for batch in (8, 32):
        secs = _rotating(list(models), rounds, lambda lb, b=batch: _timed(lambda: pair_logits(models[lb], pairs, b)))
        for label, s in secs.items():
            shares = _shares(s, len(pairs), useful, executed_flops(lengths, per_row, batch), peak[out[label]["dtype"]])
            out[label][f"batch_{batch}"] = {k.replace("per_", "pairs_per_"): v for k, v in shares.items()}
            if batch == 8:
                split = stage_split(models[label], pairs, batch)
                out[label]["batch_8"]["stages_cpu_s"] = {k: round(v, 2) for k, v in split.items()} | {
                    "total_s": round(s[1], 2), "rest_s": round(s[1] - sum(split.values()), 2)}  # fmt: skip
    return out


def embedder_rows(
    folder: Path, labels: list[str], threads: int, passages: list[str], lengths: list[int],
    per_row: dict[int, int], peak: dict[str, float], rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """Passages/s (batches of 32) and share of peak for each backend."""
    from app.retrieval.embedder import encode_texts

    models, rows = _models("embedder", folder, labels, threads)
    out: dict[str, Any] = {label: {"skipped": why} for label, why in rows.items()}
    useful, executed = sum(per_row[n] for n in lengths), executed_flops(lengths, per_row, 32)
    run = lambda lb: _timed(lambda: encode_texts(models[lb], passages, True, 32, task="document"))  # noqa: E731
    for label, s in _rotating(list(models), rounds, run).items():
        shares = _shares(s, len(passages), useful, executed, peak[label.split("-")[1]])
        out[label] = {"dtype": label.split("-")[1]} | {
            k.replace("per_", "passages_per_"): v for k, v in shares.items()}  # fmt: skip
    return out


def _length_stats(lengths: list[int], per_row: dict[int, int], config: Any) -> dict[str, Any]:
    import numpy as np

    mean_flops = float(np.mean([per_row[n] for n in lengths]))
    return {
        "rows": len(lengths),
        "tokens_mean": round(float(np.mean(lengths)), 1),
        "tokens_p50": float(np.percentile(lengths, 50)),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "at_cap_share": round(float(np.mean(np.asarray(lengths) >= MAX_LENGTH)), 3),
        "gflop_per_row_mean": round(mean_flops / 1e9, 3),
        "gflop_per_row_by_config_mean": round(float(np.mean([config_flops(config, n) for n in lengths])) / 1e9, 3),
    }


def _best(rows: dict[str, Any], key: str) -> dict[str, Any]:
    measured = {
        label: row[key]["share_of_peak"] if key in row else row.get("share_of_peak")
        for label, row in rows.items()
        if "skipped" not in row
    }
    label = max(measured, key=lambda lb: measured[lb])
    return {"backend": label, "share_of_peak": measured[label], "aim_50pct_met": measured[label] >= 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=3072, help="square matmul side for the peak")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--queries", type=int, default=20, help="SciFact test queries whose top 100 are the work")
    parser.add_argument("--pairs", type=int, default=100, help="pairs timed per backend and batch size")
    parser.add_argument("--passages", type=int, default=256, help="passages timed per embedder backend")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--name", default="hardware_ceiling")
    parser.add_argument("--index-dir", type=Path, help="a built SciFact index of the bundled embedder to reuse")
    args = parser.parse_args()
    import torch

    from app.retrieval.backends.base import body
    from app.retrieval.embedder import token_lengths
    from app.retrieval.reranker import load_reranker
    from app.services.models import bundled_model_path
    from bench.common import write_results

    all_pairs, all_passages = candidates(args.queries, args.index_dir)
    work = Path(tempfile.mkdtemp(prefix="retune-ceiling-"))
    for kind in ("reranker", "embedder"):
        shutil.copytree(bundled_model_path(), work / kind)
    reference = load_reranker(str(work / "reranker"), "cpu", MAX_LENGTH)
    hf_body, hf_config = body(reference).model, body(reference).model.config
    pair_lengths = token_lengths(reference.tokenizer, all_pairs, MAX_LENGTH)
    passage_lengths = token_lengths(reference.tokenizer, all_passages, MAX_LENGTH)
    per_pair = flops_at_lengths(hf_body, set(pair_lengths))
    per_passage = flops_at_lengths(hf_body.bert, set(passage_lengths))  # the embedder's body: no head
    rng = random.Random(0)
    sample = sorted(rng.sample(range(len(all_pairs)), min(args.pairs, len(all_pairs))))
    pairs, lengths = [all_pairs[i] for i in sample], [pair_lengths[i] for i in sample]
    psample = sorted(rng.sample(range(len(all_passages)), min(args.passages, len(all_passages))))
    passages, plengths = [all_passages[i] for i in psample], [passage_lengths[i] for i in psample]
    runs = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"{threads} thread(s): peak ...", flush=True)
        peak = gemm_peak(args.size, args.repeats)
        print(f"peak {peak}; reranker ...", flush=True)
        rerank = reranker_rows(work / "reranker", args.backends, threads, pairs, lengths, per_pair, peak, args.rounds)
        print("embedder ...", flush=True)
        embed = embedder_rows(work / "embedder", args.backends, threads, passages, plengths, per_passage, peak,
                              args.rounds)  # fmt: skip
        runs[str(threads)] = {
            "peak_gflops": peak,
            "reranker": rerank,
            "embedder": embed,
            "best_reranker_batch_8": _best(rerank, "batch_8"),
            "best_reranker_batch_32": _best(rerank, "batch_32"),
            "best_embedder": _best(embed, ""),
        }
    shutil.rmtree(work, ignore_errors=True)
    write_results(
        args.name,
        {
            "setup": f"peak: {args.size}^3 matmul, median of {args.repeats}; work: SciFact test, {args.queries} "
            f"queries' top {RECALL_K} by the bundled all-MiniLM-L6-v2, cut at {MAX_LENGTH} tokens; timed: "
            f"{len(pairs)} sampled pairs (reranker: bundled MiniLM + fresh one-logit head, speed only) and "
            f"{len(passages)} of their passages (embedder, batch 32), {args.rounds} rounds, rotating order, median; "
            "FLOPs by torch.utils.flop_counter.FlopCounterMode; share = useful FLOP/s / peak at the backend's "
            "dtype (int8: the higher of torch._int_mm and a dynamic-quantised Linear), all per CPU-second of this "
            "process (wall rates beside them); executed share counts padding to each length-sorted batch's "
            "longest row. Shared 2-core machine: other helpers ran (load average ~9).",
            "load_average_at_end": os.getloadavg(),
            "reranker_pairs": _length_stats(pair_lengths, per_pair, hf_config),
            "reranker_timed_pairs": _length_stats(lengths, per_pair, hf_config),
            "embedder_passages": _length_stats(passage_lengths, per_passage, hf_config),
            "threads": runs,
        },
    )


if __name__ == "__main__":
    main()
