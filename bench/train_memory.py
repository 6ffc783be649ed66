"""Peak resident memory of an embedder job's training steps, per batch size, sequence length and option.

    .venv/bin/python -m bench.train_memory --config before             # one config, minutes on a 2-core CPU
    .venv/bin/python -m bench.train_memory --config all                # every named config, one at a time
    .venv/bin/python -m bench.train_memory --config attn_dropout0_cached_mb16 --batch-sizes 16 32 --seq-lens 128 256

Each config runs in a child process of its own, so that its peak (Linux ``VmHWM``) is its own: the
child builds the model, loss and Trainer arguments as ``app.training.embedder.train_embedder`` does
(``load_embedder``, ``trainer_arguments``, no-duplicates batches, the query/document router mapping),
runs ``--steps`` optimiser steps on SciFact training pairs (query, judged abstract, a random
abstract: most abstracts exceed 256 tokens, so batches are full length, the worst case), and
reports VmHWM, the resident size after loading the model, seconds per step after the first step and
the loss at each step (equal losses across options = the same training). ``eval`` configs instead
encode ``--eval-docs`` SciFact passages at batch 64, as the step-0 evaluation does.

Results merge into bench/results/train_memory.json by config label (the latest run of each).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, SHARED_DATA, write_results

NAME = "train_memory"
# Named configs, each over BASE: the settings of an embedder job before 2026-12-01 (MiniLM's attention
# dropout 0.1, the plain loss), so that a config does not change when the job defaults do.
# "attn" None: what transformers picks (sdpa on CPU in our versions).
BASE: dict[str, Any] = {
    "mode": "train",
    "batch_size": 32,
    "seq_len": 256,
    "attn": None,
    "gradient_checkpointing": None,
    "cached_loss": False,
    "mini_batch_size": 32,
    "attention_dropout": None,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {},
    "eager": {"attn": "eager"},
    "checkpointing": {"gradient_checkpointing": True},
    "cached_mb16": {"cached_loss": True, "mini_batch_size": 16},
    "attn_dropout0": {"attention_dropout": 0.0},
    "attn_dropout0_cached_mb8": {"attention_dropout": 0.0, "cached_loss": True, "mini_batch_size": 8},
    "attn_dropout0_cached_mb16": {"attention_dropout": 0.0, "cached_loss": True, "mini_batch_size": 16},
    "attn_dropout0_cached_mb32": {"attention_dropout": 0.0, "cached_loss": True, "mini_batch_size": 32},
    "attn_dropout0_checkpointing": {"attention_dropout": 0.0, "gradient_checkpointing": True},
    "eval": {"mode": "eval"},
    # A whole embedder job (step-0 evaluation, mining, training, final evaluation) at today's defaults, small.
    "job": {"mode": "job"},
}


def vm_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (Linux /proc; what the guard's table is measured in)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def scifact_rows(n_rows: int, seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    """(anchor, positive, negative_1) columns of SciFact train pairs, plus the corpus texts."""
    from app.ingest import ParseLimits, parse_beir_dir
    from app.retrieval.embedder import passage_text

    rs = parse_beir_dir(SHARED_DATA / "scifact", ParseLimits())
    rng = random.Random(seed)
    doc_ids = sorted(rs.corpus)
    rows: dict[str, list[str]] = {"anchor": [], "positive": [], "negative_1": []}
    for qid, judged in rs.qrels["train"].items():
        for doc_id, grade in judged.items():
            if grade > 0 and len(rows["anchor"]) < n_rows:
                rows["anchor"].append(rs.queries[qid])
                rows["positive"].append(passage_text(rs.corpus[doc_id]))
                rows["negative_1"].append(passage_text(rs.corpus[rng.choice(doc_ids)]))
    return rows, [passage_text(rs.corpus[d]) for d in doc_ids]


def job_probe(steps: int, eval_docs: int) -> dict[str, Any]:
    """A real job (``train_embedder``) at the default params: 64 SciFact training queries, ``steps`` steps,
    10% of the queries held out, ``eval_docs`` documents; its process's peak is the job's."""
    from app.training.data import EvalSpec
    from app.training.params import EmbedderParams
    from bench.common import run_embedder_job

    spec = EvalSpec(holdout_fraction=0.1, seed=42, max_queries=20, max_corpus_docs=eval_docs)
    started = time.perf_counter()
    result = run_embedder_job("scifact", spec, EmbedderParams(max_steps=steps, max_train_queries=64))
    return {
        "params": result["params"],
        "steps": result["steps"],
        "corpus_docs": result["corpus_docs"],
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss": vm_status()["VmHWM"],
    }


def run_child(config: dict[str, Any], steps: int, eval_docs: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    if config["mode"] == "job":
        return job_probe(steps, eval_docs)

    from app.retrieval.embedder import load_embedder
    from app.services.models import bundled_model_path

    torch.manual_seed(0)
    rows, corpus = scifact_rows(config["batch_size"] * (steps + 2))
    start = vm_status()
    kwargs = {"attn_implementation": config["attn"]} if config["attn"] else {}
    model = load_embedder(bundled_model_path(), "cpu", config["seq_len"], **kwargs)
    loaded = vm_status()
    result: dict[str, Any] = {
        "attention": model[0].auto_model.config._attn_implementation,
        "rss_before_model": start["VmRSS"],
        "rss_model_loaded": loaded["VmRSS"],
    }
    if config["mode"] == "eval":
        return result | encode_probe(model, corpus[:eval_docs])
    return result | train_probe(model, rows, config, steps)


def encode_probe(model: Any, passages: list[str]) -> dict[str, Any]:
    from app.retrieval.embedder import encode_texts

    started, cpu = time.perf_counter(), time.process_time()
    encode_texts(model, passages, normalize=True, batch_size=64, task="document")
    return {
        "docs": len(passages),
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "peak_rss": vm_status()["VmHWM"],
    }


def train_probe(model: Any, rows: dict[str, list[str]], config: dict[str, Any], steps: int) -> dict[str, Any]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import losses
    from transformers import TrainerCallback

    from app.training.common import set_attention_dropout, trainer_arguments
    from app.training.params import EmbedderParams

    overrides = {k: config[k] for k in ("cached_loss", "mini_batch_size")}
    set_attention_dropout(model, config["attention_dropout"])
    params = EmbedderParams(
        batch_size=config["batch_size"], passage_max_len=config["seq_len"], max_steps=steps, **overrides
    )
    scale = 1.0 / params.temperature
    if params.cached_loss:
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=params.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=scale)
    ends: list[float] = []
    cpu_ends: list[float] = []
    logged: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                logged.append(round(float(logs["loss"]), 5))

    extra = (
        {} if config["gradient_checkpointing"] is None else {"gradient_checkpointing": config["gradient_checkpointing"]}
    )
    with tempfile.TemporaryDirectory() as tmp:
        arguments = trainer_arguments(params, Path(tmp), "cpu", len(rows["anchor"])) | {"logging_steps": 1} | extra
        args = SentenceTransformerTrainingArguments(
            **arguments,
            save_strategy="no",
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            router_mapping={c: "query" if c == "anchor" else "document" for c in rows},
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss, callbacks=[Clock()]
        )
        trainer.train()
    return {
        "params": {"cached_loss": params.cached_loss, "mini_batch_size": params.mini_batch_size},
        "attention_dropout": next(m.dropout.p for m in model.modules() if type(m).__name__.endswith("SelfAttention")),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "steps": len(ends),
        "seconds_per_step": round((ends[-1] - ends[0]) / max(len(ends) - 1, 1), 2),
        # CPU seconds (all threads) per step: comparable across configs on a shared machine, wall time is not.
        "cpu_seconds_per_step": round((cpu_ends[-1] - cpu_ends[0]) / max(len(cpu_ends) - 1, 1), 2),
        "losses": logged,
        "peak_rss": vm_status()["VmHWM"],
    }


def measure(label: str, config: dict[str, Any], steps: int, eval_docs: int, threads: int) -> dict[str, Any]:
    """Run one config in a child process and return its measurement."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "RETUNE_TORCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bench.train_memory", "--child", json.dumps(config), "--steps", str(steps)]
    cmd += ["--eval-docs", str(eval_docs), "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{label} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(line.removeprefix("RESULT "))
    measured["peak_rss_gib"] = round(measured["peak_rss"] / 2**30, 3)
    print(f"{label}: {json.dumps(measured)}", flush=True)
    return {"config": config, "threads": threads, "steps": steps, "commit": commit(), **measured}


def previous_runs() -> dict[str, Any]:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()).get("runs", {}) if path.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="*", default=[], help=f"named configs: {', '.join(CONFIGS)} or 'all'")
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[32])
    parser.add_argument("--seq-lens", nargs="*", type=int, default=[256])
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per training config")
    parser.add_argument("--eval-docs", type=int, default=512, help="passages the eval config encodes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    parser.add_argument("--tag", default="", help="appended to each run's label (e.g. a paired timing run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        config = BASE | json.loads(args.child)
        print("RESULT " + json.dumps(run_child(config, args.steps, args.eval_docs)), flush=True)
        return
    names = list(CONFIGS) if args.config == ["all"] else args.config
    todo = {f"{n}_b{b}_s{s}{args.tag}": BASE | CONFIGS[n] | {"batch_size": b, "seq_len": s} for n in names
            for b in args.batch_sizes for s in args.seq_lens}  # fmt: skip
    for label, config in todo.items():
        measured = measure(label, config, args.steps, args.eval_docs, args.threads)
        runs = previous_runs()  # read again: another run of this benchmark may have written meanwhile
        runs[label] = measured
        write_results(NAME, {"runs": runs}, False)
    print(f"written to {RESULTS / (NAME + '.json')}")


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
