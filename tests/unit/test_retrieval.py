"""VectorIndex, the loaded-model cache, embedder text formatting, best-model tracking and sigmoid."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # app.training.callbacks imports transformers

import math
import threading
import time
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pytest

from app.evaluation.retrieval import CorpusVectors
from app.ingest import Document
from app.retrieval.cache import LoadedCache
from app.retrieval.embedder import EmbedderConfig, passage_text
from app.retrieval.reranker import sigmoid
from app.retrieval.vector_index import VectorIndex
from app.training.callbacks import BestModel

# ---------------------------------------------------------------- VectorIndex


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def toy_index():
    rng = np.random.default_rng(1234)
    corpus = unit_rows(rng, 60, 16)
    queries = unit_rows(rng, 5, 16)
    doc_ids = [f"doc-{i}" for i in range(60)]
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    # Guard: no near ties, so the exact order is well defined at float32 precision.
    assert np.min(np.diff(np.sort(scores, axis=1), axis=1)) > 1e-5
    return corpus, queries, doc_ids, scores


def test_vector_index_exact_order_equals_numpy(toy_index):
    corpus, queries, doc_ids, scores = toy_index
    index = VectorIndex.build(corpus, doc_ids)
    assert len(index) == 60 and index.dim == 16
    hits = index.search(queries, 10)
    assert len(hits) == len(queries)
    for qi, ranking in enumerate(hits):
        order = np.argsort(-scores[qi])[:10]
        assert [d for d, _ in ranking] == [doc_ids[i] for i in order]
        np.testing.assert_allclose([s for _, s in ranking], scores[qi, order], atol=1e-5)


def test_vector_index_k_larger_than_corpus(toy_index):
    corpus, queries, doc_ids, scores = toy_index
    index = VectorIndex.build(corpus[:4], doc_ids[:4])
    hits = index.search(queries[:2], 100)
    for qi, ranking in enumerate(hits):
        assert [d for d, _ in ranking] == [doc_ids[i] for i in np.argsort(-scores[qi, :4])]
    assert index.search(queries[:3], 0) == [[], [], []]


def test_vector_index_rejects_mismatched_ids(toy_index):
    corpus, _, doc_ids, _ = toy_index
    with pytest.raises(ValueError):
        VectorIndex.build(corpus, doc_ids[:-1])


def test_vector_index_save_load_round_trip(toy_index, tmp_path: Path):
    corpus, queries, doc_ids, _ = toy_index
    index = VectorIndex.build(corpus, doc_ids)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.doc_ids == doc_ids
    assert len(loaded) == len(index) and loaded.dim == index.dim
    assert loaded.search(queries, 25) == index.search(queries, 25)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_vector_index_gives_back_the_vectors_it_was_built_from(toy_index, tmp_path: Path, kind: str):
    """A job reuses an index's rows instead of encoding the corpus again: they must be the same vectors."""
    corpus, _, doc_ids, _ = toy_index
    VectorIndex.build(corpus, doc_ids, kind).save(tmp_path / kind)
    loaded = VectorIndex.load(tmp_path / kind)
    np.testing.assert_array_equal(loaded.vectors(), corpus)
    encoded = CorpusVectors(loaded.vectors(), loaded.doc_ids)
    subset = encoded.restricted_to(["doc-7", "doc-2"])
    assert subset is not None and subset.doc_ids == ["doc-7", "doc-2"]
    np.testing.assert_array_equal(subset.vectors, corpus[[7, 2]])
    assert encoded.restricted_to(["doc-2", "not-indexed"]) is None


# ---------------------------------------------------------------- LoadedCache


class CountingLoader:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: dict[str, int] = {}
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, key: str):
        def load():
            with self._lock:
                self.calls[key] = self.calls.get(key, 0) + 1
            if self.delay:
                time.sleep(self.delay)
            return object()  # a new identity per load, so a reload is visible

        return load


def test_cache_loads_once_per_key():
    cache, loader = LoadedCache(4), CountingLoader()
    a1 = cache.get("a", loader("a"))
    a2 = cache.get("a", loader("a"))
    b = cache.get("b", loader("b"))
    assert a1 is a2 and b is not a1
    assert loader.calls == {"a": 1, "b": 1}


def test_cache_loads_once_with_concurrent_requests():
    cache, loader = LoadedCache(4), CountingLoader(delay=0.05)
    barrier = threading.Barrier(8)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(key: str):
        try:
            barrier.wait()
            value = cache.get(key, loader(key))
            with lock:
                results.append((key, value))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("same",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert len(results) == 8
    assert loader.calls == {"same": 1}
    assert len({id(v) for _, v in results}) == 1


def test_cache_concurrent_distinct_keys_each_load_once():
    cache, loader = LoadedCache(8), CountingLoader(delay=0.02)
    barrier = threading.Barrier(8)

    def worker(i: int):
        barrier.wait()
        for _ in range(3):
            cache.get(f"k{i % 4}", loader(f"k{i % 4}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert loader.calls == {f"k{i}": 1 for i in range(4)}


def test_cache_evicts_least_recently_used():
    cache, loader = LoadedCache(2), CountingLoader()
    a = cache.get("a", loader("a"))
    cache.get("b", loader("b"))
    assert cache.get("a", loader("a")) is a  # a is now more recent than b
    cache.get("c", loader("c"))  # over capacity: evicts b
    assert loader.calls == {"a": 1, "b": 1, "c": 1}
    assert cache.get("a", loader("a")) is a
    assert loader.calls["a"] == 1
    cache.get("b", loader("b"))  # reloaded; evicts c (a was used more recently)
    assert loader.calls["b"] == 2
    cache.get("a", loader("a"))
    assert loader.calls["a"] == 1
    cache.get("c", loader("c"))
    assert loader.calls["c"] == 2


def test_cache_capacity_at_least_one():
    cache, loader = LoadedCache(0), CountingLoader()
    x = cache.get("x", loader("x"))
    assert cache.get("x", loader("x")) is x
    cache.get("y", loader("y"))
    cache.get("x", loader("x"))
    assert loader.calls == {"x": 2, "y": 1}


def test_cache_failed_load_is_not_cached():
    cache = LoadedCache(2)

    def boom():
        raise RuntimeError("load failed")

    with pytest.raises(RuntimeError):
        cache.get("k", boom)
    loader = CountingLoader()
    value = cache.get("k", loader("k"))
    assert cache.get("k", loader("k")) is value
    assert loader.calls == {"k": 1}


# ---------------------------------------------------------------- EmbedderConfig


def test_format_query_without_instruction_is_identity():
    assert EmbedderConfig().format_query("what is bm25") == "what is bm25"
    # A format without an instruction is not applied.
    assert EmbedderConfig(query_instruction_format="Q: {}{}").format_query("x") == "x"


def test_format_query_with_instruction():
    cfg = EmbedderConfig(query_instruction="Represent this query: ")
    assert cfg.format_query("what is bm25") == "Represent this query: " + "what is bm25"


def test_format_query_custom_format():
    cfg = EmbedderConfig(query_instruction="Find passages", query_instruction_format="Instruct: {}\nQuery: {}")
    assert cfg.format_query("what is bm25") == "Instruct: Find passages\nQuery: what is bm25"


def test_format_passage_and_passage_text():
    with_title = Document(id="1", title="BM25", text="A ranking function.")
    no_title = Document(id="2", title="", text="Just text.")
    assert passage_text(with_title) == "BM25 A ranking function."
    assert passage_text(no_title) == "Just text."
    assert EmbedderConfig().format_passage(with_title) == "BM25 A ranking function."
    cfg = EmbedderConfig(passage_instruction="passage: ")
    assert cfg.format_passage(with_title) == "passage: BM25 A ranking function."
    assert cfg.format_passage("raw") == "passage: raw"


def test_embedder_config_round_trip_ignores_unknown_keys():
    cfg = EmbedderConfig(query_instruction="q: ", passage_instruction="p: ", normalize=False, max_seq_length=128)
    assert EmbedderConfig.from_dict({**cfg.to_dict(), "future_key": 1}) == cfg
    assert EmbedderConfig.from_dict(None) == EmbedderConfig()


# ---------------------------------------------------------------- BestModel


def test_best_model_tracks_base_and_best():
    saves: list[int] = []
    best = BestModel("ndcg@10", save=lambda: saves.append(1))

    best.offer(0, {"ndcg@10": 0.40, "mrr@10": 0.9})
    assert best.base_value == 0.40
    assert saves == [] and best.best_value is None and best.best_step is None
    assert best.better_than_base is False

    best.offer(10, {"ndcg@10": 0.35})  # first trained state: saved even if below base
    assert len(saves) == 1 and best.best_value == 0.35 and best.best_step == 10
    assert best.better_than_base is False

    best.offer(20, {"ndcg@10": 0.45})
    assert len(saves) == 2 and best.best_value == 0.45 and best.best_step == 20
    assert best.better_than_base is True

    best.offer(30, {"ndcg@10": 0.44})  # worse: no save
    best.offer(40, {"ndcg@10": 0.45})  # equal: no save, earlier step kept
    assert len(saves) == 2 and best.best_step == 20
    assert best.better_than_base is True


def test_best_model_equal_to_base_is_not_better():
    best = BestModel("mrr@10", save=lambda: None)
    best.offer(0, {"mrr@10": 0.5})
    best.offer(5, {"mrr@10": 0.5})
    assert best.best_value == 0.5
    assert best.better_than_base is False


def test_best_model_uses_its_metric():
    saves: list[int] = []
    best = BestModel("recall@100", save=lambda: saves.append(1))
    best.offer(0, {"recall@100": 0.5, "ndcg@10": 0.1})
    best.offer(1, {"recall@100": 0.4, "ndcg@10": 0.9})
    best.offer(2, {"recall@100": 0.6, "ndcg@10": 0.0})
    assert best.best_step == 2 and len(saves) == 2 and best.better_than_base
    with pytest.raises(KeyError):
        best.offer(3, {"ndcg@10": 1.0})


def test_best_model_without_base():
    best = BestModel("ndcg@10", save=lambda: None)
    best.offer(7, {"ndcg@10": 0.9})
    assert best.better_than_base is False


# ---------------------------------------------------------------- sigmoid


def exact_sigmoid(x: float) -> float:
    """1 / (1 + e^-x) in 60-digit decimal arithmetic, which does not overflow."""
    with localcontext() as ctx:
        ctx.prec = 60
        return float(Decimal(1) / (Decimal(1) + (-Decimal(x)).exp()))


@pytest.mark.parametrize("x", [0.0, 1e-12, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0, 50.0, -50.0, 700.0, -700.0])
def test_sigmoid_matches_definition(x):
    assert sigmoid(x) == pytest.approx(exact_sigmoid(x), rel=1e-12, abs=1e-300)
    if abs(x) < 700:
        assert sigmoid(x) == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-12)


@pytest.mark.parametrize("x", [710.0, 1e4, -710.0, -1e4])
def test_sigmoid_does_not_overflow(x):
    # math.exp(710) overflows, so the naive formula would raise here on one side.
    assert sigmoid(x) == pytest.approx(exact_sigmoid(x), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("x", [1e308, math.inf, -1e308, -math.inf])
def test_sigmoid_extremes(x):
    assert sigmoid(x) == (1.0 if x > 0 else 0.0)


def test_sigmoid_symmetry():
    for x in (0.1, 2.0, 15.0, 37.5):
        assert sigmoid(x) + sigmoid(-x) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall_against_exact(kind: str, tmp_path) -> None:
    from app.retrieval.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(vectors))]
    exact = VectorIndex.build(vectors, ids, "flat").search(queries, 10)
    approx_index = VectorIndex.build(vectors, ids, kind)
    approx = approx_index.search(queries, 10)
    recall = np.mean([len({d for d, _ in a} & {d for d, _ in e}) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9, recall
    assert approx_index.memory_bytes() >= vectors.nbytes
    approx_index.save(tmp_path)
    reloaded = VectorIndex.load(tmp_path)
    assert reloaded.kind == kind and reloaded.search(queries, 10) == approx


def test_auto_index_kind_by_size() -> None:
    from app.retrieval.vector_index import AUTO_FLAT_MAX, choose_kind

    assert choose_kind("auto", 1000) == "flat"
    assert choose_kind("auto", AUTO_FLAT_MAX + 1) == "hnsw"
    assert choose_kind("ivf", 10) == "ivf"
    with pytest.raises(ValueError):
        choose_kind("lsh", 10)
