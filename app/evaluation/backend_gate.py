"""The 1% gate: a runtime backend serves a model only if it keeps validation nDCG@10 within 1% of torch fp32.

Both engines score the job's own validation queries; the change is paired query by query and its 95%
bootstrap interval (app.evaluation.verdict) must not reach below ``-tolerance`` x the reference's mean
nDCG@10. Reading the interval, not the mean, means a small query set cannot pass a backend on luck.
The first candidate that passes is chosen; the choice, the reason and every candidate's figures are
written to the model folder (``serving_backend.json``) and its unused exports are dropped.
"""

from __future__ import annotations

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
from app.retrieval.backends.spec import Backend, BackendUnavailable, Kind
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.retrieval.reranker import load_reranker

GATE_METRIC = "ndcg@10"
DEFAULT_TOLERANCE = 0.01  # the largest relative loss of validation nDCG@10 a backend may cost


@dataclass(frozen=True)
class Candidate:
    """How to get the model under test: a fresh fp32 torch copy (``load``) and its per-query scores (``score``)."""

    kind: Kind
    load: Callable[[], Any]
    score: Callable[[Any], PerQuery]


def passes(verdict: Verdict, tolerance: float) -> bool:
    return verdict.ci_low >= -tolerance * verdict.base


def choose_backend(
    model_dir: Path, candidate: Candidate, backends: Sequence[Backend], tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None,
) -> ServingChoice:  # fmt: skip
    """Try ``backends`` in order (the preferred first) against torch fp32; save and return the choice."""
    reference = candidate.score(candidate.load())
    tried: list[dict[str, Any]] = []
    chosen = None
    for backend in [b for b in backends if not b.is_reference]:
        entry: dict[str, Any] = {"backend": backend.label}
        try:
            build_export(model_dir, backend, candidate.kind, candidate.load)
            served = apply_backend(candidate.load(), model_dir, backend, candidate.kind, threads)
            verdict = judge(reference, candidate.score(served), GATE_METRIC, split="validation")
        except BackendUnavailable as exc:
            tried.append({**entry, "passed": False, "error": str(exc)})
            continue
        entry |= {"passed": passes(verdict, tolerance), "verdict": verdict.to_dict(), "tolerance": tolerance}
        tried.append(entry)
        if entry["passed"]:
            chosen = backend.label, _why(backend, verdict, tolerance, True), entry
            break
    choice = ServingChoice(*chosen, tried) if chosen else ServingChoice(why=_no_pass(tried, tolerance), tried=tried)
    drop_exports(model_dir, choice.parsed if chosen else None)
    choice.save(model_dir)
    return choice


def _why(backend: Backend, verdict: Verdict, tolerance: float, passed: bool) -> str:
    allowed = tolerance * verdict.base
    return (
        f"{backend.label} {'passed' if passed else 'failed'} the gate: validation {GATE_METRIC} "
        f"{verdict.base:.4f} (torch-fp32) -> {verdict.final:.4f}, change {verdict.delta:+.4f} "
        f"(95% interval {verdict.ci_low:+.4f}..{verdict.ci_high:+.4f}, {verdict.queries} queries); "
        f"allowed loss {allowed:.4f} ({tolerance:.0%})"
    )


def _no_pass(tried: list[dict[str, Any]], tolerance: float) -> str:
    if not tried:
        return "torch-fp32: no other backend was tried"
    reasons = [
        _why(Backend(*t["backend"].split("-")), Verdict(**t["verdict"]), tolerance, False) if "verdict" in t
        else f"{t['backend']} unavailable: {t['error']}"
        for t in tried
    ]  # fmt: skip
    return "torch-fp32 (the reference): no candidate passed. " + "; ".join(reasons)


def embedder_candidate(model_dir: Path, config: EmbedderConfig, corpus: Mapping[str, Document],
                       queries: Mapping[str, str], qrels: Qrels) -> Candidate:  # fmt: skip
    """An embedder scored as evaluated everywhere: the whole corpus encoded, exact search, pytrec_eval."""

    def score(model: Any) -> PerQuery:
        result = evaluate_embedder(model, config, corpus, queries, qrels)
        return result.per_query or {}

    return Candidate("embedder", lambda: load_embedder(str(model_dir), "cpu", config.max_seq_length), score)


def reranker_candidate(model_dir: Path, first_stage_run: Mapping[str, Mapping[str, float]],
                       corpus: Mapping[str, Document], queries: Mapping[str, str], qrels: Qrels, rerank_k: int,
                       format_query: Callable[[str], str] = lambda q: q,
                       max_length: int | None = None) -> Candidate:  # fmt: skip
    """A reranker scored on the validation queries' first-stage candidates, its top ``rerank_k`` reranked."""

    def score(model: Any) -> PerQuery:
        result = evaluate_reranker(model, first_stage_run, corpus, queries, qrels, rerank_k, format_query)
        return result.served_per_query

    return Candidate("reranker", lambda: load_reranker(str(model_dir), "cpu", max_length), score)
