"""At the end of a job: which runtime backend will serve the kept model, decided by the 1% gate.

The exports and ``serving_backend.json`` are written into the model folder before it is published, so
they are part of the model's artifact: built once per model, never per serving process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.evaluation.backend_gate import choose_backend, embedder_candidate, reranker_candidate
from app.evaluation.retrieval import evaluate_embedder
from app.retrieval.backends.choice import ServingChoice
from app.retrieval.backends.spec import parse_backend
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.training.data import PreparedData
from app.training.observer import TrainingObserver


def choose_for_job(
    settings: Settings, kind: str, model_dir: Path, config: dict[str, Any], data: PreparedData,
    observer: TrainingObserver, first_stage: tuple[str, EmbedderConfig] | None = None, rerank_k: int = 100,
    first_stage_run: Mapping[str, Mapping[str, float]] | None = None,
) -> ServingChoice | None:  # fmt: skip
    """Gate ``settings.serving_backends`` on the job's validation queries; None when there is nothing to gate.

    ``first_stage`` (a reranker job): the candidate embedder's path and config, whose validation top
    ``rerank_k`` the reranker reorders, as search serves it; ``first_stage_run``: those candidates as the
    job already retrieved them (its saved run), so the corpus is not encoded again.
    """
    if not settings.serving_backends:
        return None
    if not data.validation_qrels:
        observer.on_message("no validation queries: served by torch-fp32 (no backend gate can run)")
        return None
    queries, qrels = data.validation_queries, data.validation_qrels
    if kind == "embedder":
        candidate = embedder_candidate(model_dir, EmbedderConfig.from_dict(config), data.corpus, queries, qrels)
    else:
        path, first_config = first_stage or ("", EmbedderConfig())
        run = first_stage_run or _first_stage_run(path, first_config, data, rerank_k)
        candidate = reranker_candidate(model_dir, run, data.corpus, queries, qrels, rerank_k,
                                       first_config.format_query, config.get("max_length"))  # fmt: skip
    backends = [parse_backend(label) for label in settings.serving_backends]
    choice = choose_backend(model_dir, candidate, backends, settings.serving_gate_tolerance, settings.torch_threads,
                            settings.serving_gate_min_speedup)  # fmt: skip
    observer.on_message(f"serving backend: {choice.backend}: {choice.why}")
    return choice


def _first_stage_run(path: str, config: EmbedderConfig, data: PreparedData, top_k: int) -> dict[str, dict[str, float]]:
    """The validation queries' candidates, retrieved anew (a job that kept no run of its own)."""
    embedder = load_embedder(path, "cpu", config.max_seq_length)
    return evaluate_embedder(embedder, config, data.corpus, data.validation_queries, data.validation_qrels,
                             top_k=top_k).run  # fmt: skip
