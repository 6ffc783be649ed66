"""Runtime backends against torch fp32 on real SciFact texts with the bundled MiniLM, and the 1% gate.

Tolerances (the embeddings are unit vectors): fp32 exports within 1e-4 per component (measured: ~2e-7);
int8 within cosine 0.98 of the reference (measured: 0.992); bf16 autocast within cosine 0.999.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from app.core.config import Settings
from app.db.tables import Model
from app.evaluation.backend_gate import Candidate, choose_backend, embedder_candidate
from app.evaluation.retrieval import evaluate_embedder
from app.ingest.types import Document
from app.retrieval.backends.base import RuntimeModule
from app.retrieval.backends.choice import CHOICE_FILE, load_choice
from app.retrieval.backends.loading import RUNTIME_DIR, apply_backend, build_export
from app.retrieval.backends.onnx_backend import MODEL_FILE
from app.retrieval.backends.spec import parse_backend
from app.retrieval.backends.torch_backend import cpu_has_bf16
from app.retrieval.embedder import EmbedderConfig, encode_texts, load_embedder
from app.retrieval.reranker import load_reranker, pair_logits
from app.services.models import bundled_model_path, serving_backend_view
from app.services.serving import on_chosen_backend
from app.services.serving_backend import choose_for_job
from app.training.data import PreparedData
from tests.conftest import SHARED_DATA, _read_jsonl, _read_qrels, missing
from tests.unit.observers import RecordingObserver

SCIFACT = SHARED_DATA / "scifact"
FP32, INT8 = parse_backend("onnx-fp32"), parse_backend("onnx-int8")


@pytest.fixture(scope="module")
def scifact() -> tuple[dict[str, dict], dict[str, str], dict[str, dict[str, int]]]:
    """10 test queries, their judged documents and 30 others: a small real validation set."""
    if not SCIFACT.is_dir():
        missing(f"SciFact not found at {SCIFACT}")
    corpus = {d["_id"]: d for d in _read_jsonl(SCIFACT / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in _read_jsonl(SCIFACT / "queries.jsonl")}
    qrels = dict(list(_read_qrels(SCIFACT / "qrels" / "test.tsv").items())[:10])
    docs = {d for judged in qrels.values() for d in judged}
    docs |= set(random.Random(0).sample(sorted(set(corpus) - docs), 30))
    return {d: corpus[d] for d in sorted(docs)}, {q: queries[q] for q in qrels}, qrels


@pytest.fixture(scope="module")
def texts(scifact) -> list[str]:
    return [f"{d['title']} {d['text']}" for d in list(scifact[0].values())[:12]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A copy of the MiniLM with its ONNX fp32 export (exports are written into the model folder)."""
    folder = tmp_path_factory.mktemp("backends") / "minilm"
    shutil.copytree(bundled_model_path(), folder)
    build_export(folder, FP32, "embedder", lambda: load_embedder(str(folder), "cpu"))
    return folder


def _linked_copy(source: Path, target: Path) -> Path:
    """A copy made of hard links (seconds saved per test); a test that rewrites a file unlinks it first."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def _on(folder: Path, label: str):
    backend = parse_backend(label)
    build_export(folder, backend, "embedder", lambda: load_embedder(str(folder), "cpu"))
    return apply_backend(load_embedder(str(folder), "cpu"), folder, backend, "embedder", threads=1)


@pytest.mark.parametrize(
    ("label", "max_abs", "min_cosine"),
    [("onnx-fp32", 1e-4, 0.9999), ("openvino-fp32", 1e-4, 0.9999), ("onnx-int8", None, 0.98)],
)
def test_backend_embeddings_match_torch_fp32(exported, texts, label, max_abs, min_cosine) -> None:
    reference = encode_texts(load_embedder(str(exported), "cpu"), texts, True, 8)
    served = _on(exported, label)
    assert isinstance(served[0].model, RuntimeModule)
    vectors = encode_texts(served, texts, True, 8)
    assert vectors.shape == reference.shape
    if max_abs is not None:
        assert np.abs(vectors - reference).max() < max_abs
    assert (vectors * reference).sum(axis=1).min() > min_cosine


def test_bf16_autocast_embeddings_close_to_fp32(exported, texts) -> None:
    if not cpu_has_bf16():
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX: bf16 is not offered here")
    reference = encode_texts(load_embedder(str(exported), "cpu"), texts, True, 8)
    vectors = encode_texts(_on(exported, "torch-bf16"), texts, True, 8)
    assert (vectors * reference).sum(axis=1).min() > 0.999
    assert not np.array_equal(vectors, reference)  # it did run in bf16


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory) -> Path:
    """A cross-encoder on the MiniLM body, its new head saved once (the reference and the export share it)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("reranker") / "reranker"
    CrossEncoder(bundled_model_path(), num_labels=1, device="cpu").save(str(folder))
    return folder


def test_onnx_fp32_logits_match_torch_fp32(reranker_dir, texts) -> None:
    pairs = [("what do T cells do?", text) for text in texts]
    reference = pair_logits(load_reranker(str(reranker_dir), "cpu"), pairs, 8)
    build_export(reranker_dir, FP32, "reranker", lambda: load_reranker(str(reranker_dir), "cpu"))
    served = apply_backend(load_reranker(str(reranker_dir), "cpu"), reranker_dir, FP32, "reranker", threads=1)
    logits = pair_logits(served, pairs, 8)
    assert logits.shape == reference.shape == (len(texts),)
    assert np.abs(logits - reference).max() < 1e-4


def _documents(scifact) -> dict[str, Document]:
    return {d: Document(id=d, title=row.get("title", ""), text=row["text"]) for d, row in scifact[0].items()}


def _gate(folder: Path, scifact, labels: list[str], tolerance: float = 0.01, min_speedup: float = 0.0,
          candidate: Candidate | None = None):  # fmt: skip
    _, queries, qrels = scifact
    candidate = candidate or embedder_candidate(folder, EmbedderConfig(), _documents(scifact), queries, qrels)
    backends = [parse_backend(label) for label in labels]
    return choose_backend(folder, candidate, backends, tolerance, threads=1, min_speedup=min_speedup)


def test_job_end_gate_accepts_an_exact_backend_and_serving_uses_it(exported, scifact, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "data", serving_backends=["onnx-fp32"], serving_gate_min_speedup=0.0)
    folder = _linked_copy(exported, tmp_path / "data" / "models" / "m1")
    _, queries, qrels = scifact
    data = PreparedData(_documents(scifact), {}, {}, {}, {}, "none", validation_queries=queries, validation_qrels=qrels)
    observer = RecordingObserver()
    choice = choose_for_job(settings, "embedder", folder, EmbedderConfig().to_dict(), data, observer)
    assert choice is not None and choice.backend == "onnx-fp32" and "passed" in choice.why
    verdict = choice.gate["verdict"]
    assert verdict["queries"] == 10 and verdict["ci_low"] >= -0.01 * verdict["base"]
    assert observer.messages[-1].startswith("serving backend: onnx-fp32")
    assert load_choice(folder) == choice  # recorded in the model folder, and shown by /models
    view = serving_backend_view(settings, Model(source="job", path="models/m1"))["serving_backend"]
    assert view["backend"] == "onnx-fp32" and view["gate"] == choice.gate
    served = on_chosen_backend(settings, load_embedder(str(folder), "cpu"), str(folder), "embedder", int8=False)
    assert isinstance(served[0].model, RuntimeModule)


def test_gate_refuses_a_corrupted_export_and_says_why(exported, scifact, tmp_path) -> None:
    import onnx
    from onnx import numpy_helper

    folder = _linked_copy(exported, tmp_path / "model")
    path = folder / RUNTIME_DIR / "onnx-fp32" / MODEL_FILE
    graph = onnx.load(str(path))
    path.unlink()  # a hard link to the shared export: write a new file instead
    rng = np.random.default_rng(0)
    for init in graph.graph.initializer:  # every weight matrix replaced by noise of its scale
        weights = numpy_helper.to_array(init)
        if weights.ndim == 2 and weights.dtype == np.float32:
            noise = rng.normal(0, float(weights.std()), weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noise, init.name))
    onnx.save(graph, str(path))

    choice = _gate(folder, scifact, ["onnx-fp32"])
    assert choice.backend == "torch-fp32"
    assert "no candidate passed" in choice.why and "onnx-fp32 failed the gate" in choice.why
    assert choice.tried[0]["passed"] is False and choice.tried[0]["verdict"]["ci_low"] < -0.01 * choice.tried[0][
        "verdict"]["base"]  # fmt: skip
    assert not (folder / RUNTIME_DIR).exists()  # the refused export is not kept
    saved = json.loads((folder / CHOICE_FILE).read_text())
    assert saved["backend"] == "torch-fp32"
    served = on_chosen_backend(Settings(), load_embedder(str(folder), "cpu"), str(folder), "embedder", int8=False)
    assert not isinstance(served[0].model, RuntimeModule)


def test_the_gate_never_serves_a_backend_slower_than_torch_fp32(exported, scifact, tmp_path) -> None:
    """An exact export keeps the quality, but no engine scores the queries a million times as fast: refused."""
    folder = _linked_copy(exported, tmp_path / "model")
    choice = _gate(folder, scifact, ["onnx-fp32"], min_speedup=1e6)
    (entry,) = choice.tried
    assert entry["passed"] is True and entry["fast_enough"] is False, entry
    assert entry["seconds"] > 0 and entry["speedup"] == pytest.approx(choice.reference["seconds"] / entry["seconds"],
                                                                      rel=0.01)  # fmt: skip
    assert choice.backend == "torch-fp32" and "too slow" in choice.why, choice.why
    assert not (folder / RUNTIME_DIR).exists()  # the refused export is not kept


def test_of_the_backends_that_keep_the_quality_the_fastest_serves(exported, scifact, tmp_path) -> None:
    """The first backend tried is made slower (5 s added to its scoring): the second, not the first, serves."""
    folder = _linked_copy(exported, tmp_path / "model")
    _, queries, qrels = scifact
    measured = embedder_candidate(folder, EmbedderConfig(), _documents(scifact), queries, qrels)
    calls = []

    def score(model):
        calls.append(model)
        if len(calls) == 2:  # the reference is scored first, then the backends in the order given
            time.sleep(5)
        return measured.score(model)

    slowed = Candidate(measured.kind, measured.load, score, measured.warm_up)
    choice = _gate(folder, scifact, ["onnx-fp32", "openvino-fp32"], candidate=slowed)
    first, second = choice.tried
    assert first["passed"] and second["passed"] and first["seconds"] > second["seconds"] + 4, choice.tried
    assert choice.backend == "openvino-fp32" and choice.gate == second, choice.why
    assert "the fastest of 2 that kept the quality" in choice.why
    assert (folder / RUNTIME_DIR / "openvino-fp32").is_dir() and not (folder / RUNTIME_DIR / "onnx-fp32").exists()


def test_job_end_gate_of_a_reranker_reranks_the_first_stage_top_k(reranker_dir, exported, scifact, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "data", serving_backends=["onnx-fp32"], serving_gate_min_speedup=0.0)
    build_export(reranker_dir, FP32, "reranker", lambda: load_reranker(str(reranker_dir), "cpu"))
    folder = _linked_copy(reranker_dir, tmp_path / "reranker")
    _, queries, qrels = scifact
    data = PreparedData(_documents(scifact), {}, {}, {}, {}, "none", validation_queries=queries, validation_qrels=qrels)
    observer = RecordingObserver()
    first_stage = (str(exported), EmbedderConfig())
    choice = choose_for_job(settings, "reranker", folder, {}, data, observer, first_stage, rerank_k=5)
    assert choice is not None and choice.backend == "onnx-fp32"
    assert choice.gate["verdict"]["queries"] == 10 and (folder / RUNTIME_DIR / "onnx-fp32").is_dir()
    served = on_chosen_backend(settings, load_reranker(str(folder), "cpu"), str(folder), "reranker", int8=False)
    assert isinstance(served[0].model, RuntimeModule)


def test_a_reranker_gate_given_the_jobs_saved_run_encodes_nothing(reranker_dir, exported, scifact, tmp_path) -> None:
    """The job's saved first-stage run stands in for the embedder: a path that cannot load proves none is loaded,
    and the verdict is the one the embedder's own run gives."""
    settings = Settings(data_dir=tmp_path / "data", serving_backends=["onnx-fp32"], serving_gate_min_speedup=0.0)
    build_export(reranker_dir, FP32, "reranker", lambda: load_reranker(str(reranker_dir), "cpu"))
    _, queries, qrels = scifact
    data = PreparedData(_documents(scifact), {}, {}, {}, {}, "none", validation_queries=queries, validation_qrels=qrels)
    embedder = load_embedder(str(exported), "cpu")
    saved = evaluate_embedder(embedder, EmbedderConfig(), data.corpus, queries, qrels, top_k=5).run
    gates = []
    for first_stage, run in (((str(exported), EmbedderConfig()), None), (("/no/such/model", EmbedderConfig()), saved)):
        folder = _linked_copy(reranker_dir, tmp_path / f"reranker-{len(gates)}")
        choice = choose_for_job(settings, "reranker", folder, {}, data, RecordingObserver(), first_stage, 5, run)
        assert choice is not None
        gates.append(choice.gate["verdict"])
    assert gates[0] == gates[1]


def test_the_gate_reads_the_interval_and_settings_name_known_backends() -> None:
    from pydantic import ValidationError

    from app.evaluation.backend_gate import passes
    from app.evaluation.verdict import Verdict

    def verdict(low: float) -> Verdict:
        return Verdict("ndcg@10", 0.60, 0.60, 0.0, low, 0.004, 300, "not_better", "validation")

    assert passes(verdict(-0.0059), 0.01) and not passes(verdict(-0.0061), 0.01)  # 1% of 0.60 is 0.006
    assert not passes(verdict(-0.0001), 0.0)
    assert Settings(serving_backends=["onnx-int8", "openvino-fp32"]).serving_backends == ["onnx-int8", "openvino-fp32"]
    with pytest.raises(ValidationError, match="unknown backend"):
        Settings(serving_backends=["onnx-bf16"])
