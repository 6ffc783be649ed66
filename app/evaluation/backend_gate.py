"""The 1% gate: a runtime backend serves a model only if it keeps validation nDCG@10 within 1% of torch fp32.

Both engines score the job's own validation queries; the change is paired query by query and its 95%
bootstrap interval (app.evaluation.verdict) must not reach below ``-tolerance`` x the reference's mean
nDCG@10. Reading the interval, not the mean, means a small query set cannot pass a backend on luck.

A backend is there to be faster, and which one is fastest depends on the CPU (int8 and bf16 kernels,
AMX or not), so the gate also times every engine on the same workload, its validation scoring, after
a short warm-up. Of the candidates that keep the quality, the fastest serves, and only if it ran at
least ``min_speedup`` times as fast as torch fp32: a backend slower than the reference is never chosen.
The choice, the reason and every candidate's figures are written to the model folder
(``serving_backend.json``) and its unused exports are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.evaluation.metrics import Qrels
from app.evaluation.retrieval import evaluate_embedder, evaluate_reranker
from app.evaluation.verdict import PerQuery, Verdict, judge
from app.ingest.types import Document
from app.retrieval.backends.choice import ServingChoice
from app.retrieval.backends.loading import apply_backend, build_export, drop_exports
from app.retrieval.backends.spec import REFERENCE, Backend, BackendUnavailable, Kind
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.retrieval.reranker import load_reranker

GATE_METRIC = "ndcg@10"
DEFAULT_TOLERANCE = 0.01  # the largest relative loss of validation nDCG@10 a backend may cost
DEFAULT_MIN_SPEEDUP = 1.0  # a backend must score the validation queries at least this much faster than torch fp32
WARM_UP_TEXTS = 16


@dataclass(frozen=True)
class Candidate:
    """How to get the model under test: a fresh fp32 torch copy (``load``), its per-query scores (``score``),
    and a few inputs through it (``warm_up``) so that no engine's first-call set-up is timed."""

    kind: Kind
    load: Callable[[], Any]
    score: Callable[[Any], PerQuery]
    warm_up: Callable[[Any], object] = lambda model: None

    def timed_score(self, model: Any) -> tuple[PerQuery, float]:
        """Per-query scores and the seconds they took, after the warm-up."""
        self.warm_up(model)
        started = time.perf_counter()
        scores = self.score(model)
        return scores, time.perf_counter() - started


def passes(verdict: Verdict, tolerance: float) -> bool:
    return verdict.ci_low >= -tolerance * verdict.base


def choose_backend(
    model_dir: Path, candidate: Candidate, backends: Sequence[Backend], tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None, min_speedup: float = DEFAULT_MIN_SPEEDUP,
) -> ServingChoice:  # fmt: skip
    """Gate every one of ``backends`` against torch fp32; save and return the fastest that passes."""
    reference, reference_seconds = candidate.timed_score(candidate.load())
    tried = [_try(model_dir, candidate, backend, reference, reference_seconds, tolerance, threads, min_speedup)
             for backend in backends if not backend.is_reference]  # fmt: skip
    chosen = max((t for t in tried if t["passed"] and t["fast_enough"]), key=lambda t: t["speedup"], default=None)
    timing = {"backend": REFERENCE.label, "seconds": round(reference_seconds, 3)}
    if chosen is None:
        choice = ServingChoice(why=_no_pass(tried, tolerance, min_speedup), tried=tried, reference=timing)
    else:
        why = _why(chosen, tolerance) + f"; the fastest of {sum(t['passed'] for t in tried)} that kept the quality"
        choice = ServingChoice(chosen["backend"], why, chosen, tried, timing)
    drop_exports(model_dir, choice.parsed if chosen else None)
    choice.save(model_dir)
    return choice


def _try(
    model_dir: Path, candidate: Candidate, backend: Backend, reference: PerQuery, reference_seconds: float,
    tolerance: float, threads: int | None, min_speedup: float,
) -> dict[str, Any]:  # fmt: skip
    """One backend's export, paired verdict and speed against the reference, or the reason it is unavailable."""
    entry: dict[str, Any] = {"backend": backend.label}
    try:
        build_export(model_dir, backend, candidate.kind, candidate.load)
        served = apply_backend(candidate.load(), model_dir, backend, candidate.kind, threads)
        scores, seconds = candidate.timed_score(served)
    except BackendUnavailable as exc:
        return {**entry, "passed": False, "fast_enough": False, "error": str(exc)}
    verdict = judge(reference, scores, GATE_METRIC, split="validation")
    speedup = reference_seconds / max(seconds, 1e-9)
    return entry | {
        "passed": passes(verdict, tolerance), "verdict": verdict.to_dict(), "tolerance": tolerance,
        "seconds": round(seconds, 3), "speedup": round(speedup, 3), "min_speedup": min_speedup,
        "fast_enough": speedup >= min_speedup,
    }  # fmt: skip


def _why(entry: dict[str, Any], tolerance: float) -> str:
    verdict = Verdict(**entry["verdict"])
    allowed = tolerance * verdict.base
    quality = (
        f"{entry['backend']} {'passed' if entry['passed'] else 'failed'} the gate: validation {GATE_METRIC} "
        f"{verdict.base:.4f} (torch-fp32) -> {verdict.final:.4f}, change {verdict.delta:+.4f} "
        f"(95% interval {verdict.ci_low:+.4f}..{verdict.ci_high:+.4f}, {verdict.queries} queries); "
        f"allowed loss {allowed:.4f} ({tolerance:.0%})"
    )
    speed = f"{entry['speedup']:.2f}x torch-fp32's speed on the same scoring (needs {entry['min_speedup']:.2f}x)"
    return f"{quality}; {speed}" + ("" if entry["fast_enough"] else ", too slow")


def _no_pass(tried: list[dict[str, Any]], tolerance: float, min_speedup: float) -> str:
    if not tried:
        return "torch-fp32: no other backend was tried"
    reasons = [_why(t, tolerance) if "verdict" in t else f"{t['backend']} unavailable: {t['error']}" for t in tried]
    return (
        f"torch-fp32 (the reference): no candidate passed both the quality gate and {min_speedup:.2f}x its speed. "
        + "; ".join(reasons)
    )


def embedder_candidate(model_dir: Path, config: EmbedderConfig, corpus: Mapping[str, Document],
                       queries: Mapping[str, str], qrels: Qrels) -> Candidate:  # fmt: skip
    """An embedder scored as evaluated everywhere: the whole corpus encoded, exact search, pytrec_eval."""

    def score(model: Any) -> PerQuery:
        result = evaluate_embedder(model, config, corpus, queries, qrels)
        return result.per_query or {}

    def warm_up(model: Any) -> None:
        model.encode([document.text for document in list(corpus.values())[:WARM_UP_TEXTS]], show_progress_bar=False)

    return Candidate("embedder", lambda: load_embedder(str(model_dir), "cpu", config.max_seq_length), score, warm_up)


def reranker_candidate(model_dir: Path, first_stage_run: Mapping[str, Mapping[str, float]],
                       corpus: Mapping[str, Document], queries: Mapping[str, str], qrels: Qrels, rerank_k: int,
                       format_query: Callable[[str], str] = lambda q: q,
                       max_length: int | None = None) -> Candidate:  # fmt: skip
    """A reranker scored on the validation queries' first-stage candidates, its top ``rerank_k`` reranked."""

    def score(model: Any) -> PerQuery:
        result = evaluate_reranker(model, first_stage_run, corpus, queries, qrels, rerank_k, format_query)
        return result.served_per_query

    def warm_up(model: Any) -> None:
        query = format_query(next(iter(queries.values()), ""))
        model.predict([(query, document.text) for document in list(corpus.values())[:WARM_UP_TEXTS]],
                      show_progress_bar=False)  # fmt: skip

    return Candidate("reranker", lambda: load_reranker(str(model_dir), "cpu", max_length), score, warm_up)
