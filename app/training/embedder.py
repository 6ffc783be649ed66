"""Contrastive fine-tuning of a bi-encoder with sentence-transformers.

Loss: MultipleNegativesRankingLoss (InfoNCE over in-batch negatives plus each query's hard
negatives, scale = 1/temperature), or its GradCache twin CachedMultipleNegativesRankingLoss when a
large batch must fit in little memory. Batches never hold the same text twice (a duplicate would
be a false in-batch negative).

Knowledge distillation: when the dataset carries the teacher's pos_scores / neg_scores for every
row's positive and negatives, the rows get a ``label`` column with those scores and the loss adds a
KL term to the teacher's softmax over each row's group (app/training/losses/in_batch_distill.py);
the in-batch negatives stay.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.evaluation.retrieval import evaluate_embedder
from app.retrieval.embedder import EmbedderConfig, encode_queries, load_embedder, set_query_length
from app.training.callbacks import BestModel, ObserverCallback
from app.training.checkpoints import (
    RunState,
    checkpoint_step,
    last_checkpoint,
    load_rows,
    save_rows,
    trainer_dir,
)
from app.training.common import TrainingOutcome, set_attention_dropout, trainer_arguments
from app.training.data import PreparedData, mine_negatives
from app.training.observer import TrainingCancelled, TrainingObserver
from app.training.params import EmbedderParams

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _negatives_for(
    qid: str, data: PreparedData, mined: dict[str, list[str]], params: EmbedderParams, rng: random.Random
) -> list[str]:
    wanted = params.train_group_size - 1
    source = params.hard_negatives
    if source == "auto":
        source = "dataset" if data.dataset_negatives.get(qid) else "mine"
    pool = list(data.dataset_negatives.get(qid, [])) if source == "dataset" else list(mined.get(qid, []))
    chosen = rng.sample(pool, min(wanted, len(pool)))
    # Top up with random corpus documents so every row has the same number of columns.
    judged = data.train_qrels[qid]
    doc_ids = list(data.corpus)
    while len(chosen) < wanted and len(doc_ids) > len(judged) + len(chosen):
        doc = rng.choice(doc_ids)
        if doc not in judged and doc not in chosen:
            chosen.append(doc)
    return chosen


def train_embedder(
    base_path: str,
    data: PreparedData,
    params: EmbedderParams,
    work_dir: Path,
    observer: TrainingObserver,
    device: str,
) -> TrainingOutcome:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import losses

    from app.training.losses.cached_in_batch_distill import CachedInBatchDistillLoss
    from app.training.losses.in_batch_distill import InBatchDistillLoss

    rng = random.Random(params.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = load_embedder(base_path, device, params.passage_max_len)
    set_attention_dropout(model, params.attention_dropout)
    config = EmbedderConfig(
        query_instruction=params.query_instruction,
        query_instruction_format=params.query_instruction_format,
        passage_instruction=params.passage_instruction,
        normalize=params.normalize,
        max_seq_length=params.passage_max_len,
        query_max_seq_length=params.query_max_len,
    )
    set_query_length(model, params.query_max_len)  # the step-0 evaluation cuts queries as training will
    if config.query_instruction or config.passage_instruction:
        # Saved with the model, so people who load it elsewhere (encode_query) get the same prefixes.
        # Retune itself applies them explicitly through EmbedderConfig, never through prompts.
        model.prompts = {"query": config.format_query(""), "document": config.passage_instruction}
    best_dir = work_dir / "best"
    best = BestModel(params.select_metric, save=lambda: model.save(str(best_dir)))
    resume_from = last_checkpoint(work_dir)
    state = RunState.load(work_dir) if resume_from else None
    rows = load_rows(work_dir) if state else None

    def evaluate(step: int, epoch: float):
        result = evaluate_embedder(model, config, data.corpus, data.eval_queries, data.eval_qrels)
        for name, value in result.metrics.items():
            observer.on_metric(step, epoch, name, value, data.eval_label)
        best.offer(step, result.metrics)
        RunState(base_metrics=base_metrics, best_value=best.best_value, best_step=best.best_step).save(work_dir)
        return result

    if state is not None and rows is not None and resume_from is not None:
        # Resuming: the base was measured and the rows were built by the first attempt.
        base_metrics = state.base_metrics
        best.base_value, best.best_value, best.best_step = (
            base_metrics[params.select_metric], state.best_value, state.best_step
        )  # fmt: skip
        observer.on_resume(checkpoint_step(resume_from))
        observer.on_message(f"resumed from checkpoint at step {checkpoint_step(resume_from)}")
    else:
        resume_from = None
        base_metrics = {}
        base = evaluate(0, 0.0)
        base_metrics = base.metrics
        RunState(base_metrics=base_metrics).save(work_dir)
        rows, teacher = _build_rows(model, config, data, params, base.corpus_vectors, base.doc_ids, rng)
        distill, why = _distillation_choice(teacher, data, params)
        if distill:
            rows["label"] = teacher  # [teacher(positive), teacher(negative_1), ...], the columns' order
        save_rows(work_dir, rows)
        observer.on_message(why)
    train_dataset = Dataset.from_dict(rows)

    scale = 1.0 / params.temperature
    if "label" in rows:  # also on resume: the saved rows say whether the first attempt distilled
        kd = {"distillation_weight": params.distillation_weight, "teacher_temperature": params.teacher_temperature}
        if params.cached_loss:
            loss = CachedInBatchDistillLoss(model, scale=scale, mini_batch_size=params.mini_batch_size, **kd)
        else:
            loss = InBatchDistillLoss(model, scale=scale, **kd)
    elif params.cached_loss:
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=params.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=scale)

    args = SentenceTransformerTrainingArguments(
        **trainer_arguments(params, trainer_dir(work_dir), device, len(train_dataset)),
        save_strategy="steps",
        save_steps=params.checkpoint_steps,
        save_total_limit=1,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        # Queries are tokenised as task "query" (query_max_len, a Router model's query branch), the rest as documents.
        router_mapping={column: "query" if column == "anchor" else "document" for column in rows if column != "label"},
    )
    callback = ObserverCallback(observer, lambda s, e: evaluate(s, e), params.eval_steps)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, callbacks=[callback]
    )
    trainer.train(resume_from_checkpoint=resume_from)
    if callback.cancelled:
        raise TrainingCancelled(f"cancelled at step {trainer.state.global_step}")
    if callback.last_evaluated_step != trainer.state.global_step:
        evaluate(trainer.state.global_step, float(trainer.state.epoch or 0.0))

    return TrainingOutcome(
        model_dir=best_dir,
        config=config.to_dict(),
        better_than_base=best.better_than_base,
        base_value=best.base_value,
        best_value=best.best_value,
        best_step=best.best_step,
        metric=params.select_metric,
    )


def _build_rows(
    model: SentenceTransformer,
    config: EmbedderConfig,
    data: PreparedData,
    params: EmbedderParams,
    corpus_vectors: np.ndarray,
    doc_ids: list[str],
    rng: random.Random,
) -> tuple[dict[str, list[Any]], list[list[float] | None]]:
    """(anchor, positive, negative_1..N-1) rows; negatives from the dataset or mined from the base model.

    Also returns, per row, the teacher's scores of [positive, negative_1, ...] from the dataset, or
    None when one of them has no score (mined and random negatives never have one).
    """
    mined: dict[str, list[str]] = {}
    needs_mining = params.train_group_size > 1 and (
        params.hard_negatives == "mine"
        or (params.hard_negatives == "auto" and any(q not in data.dataset_negatives for q in data.train_qrels))
    )
    if needs_mining:
        # The step-0 evaluation encoded the whole corpus with the base model: mine from those vectors.
        train_ids = list(data.train_queries)
        query_vectors = encode_queries(model, config, [data.train_queries[q] for q in train_ids])
        mined = mine_negatives(
            query_vectors, train_ids, corpus_vectors, doc_ids, data.train_qrels,
            tuple(params.negative_rank_range), params.train_group_size - 1, params.seed, params.negative_sampling,
        )  # fmt: skip

    rows: dict[str, list[Any]] = {"anchor": [], "positive": []}
    teacher: list[list[float] | None] = []
    for i in range(params.train_group_size - 1):
        rows[f"negative_{i + 1}"] = []
    for qid, judged in data.train_qrels.items():
        query = config.format_query(data.train_queries[qid])
        for doc_id, grade in judged.items():
            if grade <= 0:
                continue
            negatives = _negatives_for(qid, data, mined, params, rng)
            if len(negatives) < params.train_group_size - 1:
                continue  # corpus too small to fill the group; a rare edge in toy data
            rows["anchor"].append(query)
            rows["positive"].append(config.format_passage(data.corpus[doc_id]))
            for i, neg in enumerate(negatives):
                rows[f"negative_{i + 1}"].append(config.format_passage(data.corpus[neg]))
            scored = data.teacher_scores.get(qid, {})
            group = [doc_id, *negatives]
            teacher.append([scored[d] for d in group] if all(d in scored for d in group) else None)
    if not rows["anchor"]:
        raise ValueError("no training pair could be built from the dataset")
    return rows, teacher


def _distillation_choice(
    teacher: list[list[float] | None], data: PreparedData, params: EmbedderParams
) -> tuple[bool, str]:
    """Distil when allowed and every row has the teacher's scores; say which loss is used and why."""
    contrastive = "CachedMultipleNegativesRankingLoss" if params.cached_loss else "MultipleNegativesRankingLoss"
    off = f"knowledge distillation: off, loss {contrastive}"
    if params.knowledge_distillation == "off":
        return False, f"{off} (knowledge_distillation is 'off')"
    if not data.teacher_scores:
        return False, f"{off} (the training data has no pos_scores / neg_scores)"
    if params.train_group_size < 2:
        return False, f"{off} (train_group_size 1: a group of one passage has nothing to distil)"
    missing = sum(1 for t in teacher if t is None)
    if missing:
        return False, (
            f"{off} ({missing} of {len(teacher)} training rows lack a teacher score for their positive or a "
            "negative: their negatives were mined or drawn at random; see hard_negatives and train_group_size)"
        )
    return True, (
        f"knowledge distillation: on, loss {contrastive} (in-batch + hard negatives) + "
        f"{params.distillation_weight:g} x KL to the teacher's softmax over each group of "
        f"{params.train_group_size} (teacher_temperature {params.teacher_temperature:g})"
    )
