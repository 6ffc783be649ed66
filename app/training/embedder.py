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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.evaluation.retrieval import CorpusVectors, KnownVectors, encode_corpus, evaluate_queries
from app.evaluation.verdict import Verdict, judge
from app.retrieval.embedder import (
    EmbedderConfig,
    encode_queries,
    load_embedder,
    saved_config,
    set_query_length,
)
from app.training.calibrate import calibrate_embedder, report_embedder
from app.training.callbacks import BestModel, CheckpointSaved, ObserverCallback
from app.training.checkpoints import (
    RunState,
    checkpoint_step,
    chosen_dir,
    last_checkpoint,
    load_rows,
    replace_dir,
    save_rows,
    trainer_dir,
)
from app.training.common import (
    TrainingOutcome,
    checkpoint_arguments,
    precision_flags,
    precision_message,
    reused_encoding,
    served_forward,
    set_attention_dropout,
    trainer_arguments,
    unwrap_forward,
)
from app.training.data import TEST_ROLE, VALIDATION_ROLE, PreparedData, judged_and_copies, mine_negatives
from app.training.observer import TrainingCancelled, TrainingObserver, stop_if_asked
from app.training.params import EmbedderParams

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from app.training.distributed import World


def _negatives_for(
    qid: str,
    data: PreparedData,
    mined: dict[str, list[str]],
    params: EmbedderParams,
    rng: random.Random,
    excluded: set[str],
    doc_ids: list[str],
) -> list[str]:
    """``excluded``: the query's judged documents and every copy of them (same text under another id)."""
    wanted = params.train_group_size - 1
    source = params.hard_negatives
    if source == "auto":
        source = "dataset" if data.dataset_negatives.get(qid) else "mine"
    pool = list(data.dataset_negatives.get(qid, [])) if source == "dataset" else list(mined.get(qid, []))
    chosen = rng.sample([d for d in pool if d not in excluded], min(wanted, len(pool)))
    # Top up with random corpus documents so every row has the same number of columns.
    while len(chosen) < wanted and len(doc_ids) > len(excluded) + len(chosen):
        doc = rng.choice(doc_ids)
        if doc not in excluded and doc not in chosen:
            chosen.append(doc)
    return chosen


def training_config(params: EmbedderParams, data: PreparedData) -> EmbedderConfig:
    """How the model is trained and then served: the job's params, and a FlagEmbedding file's ``prompt``
    as the query instruction (refused when the params name another one)."""
    instruction = params.query_instruction or data.query_prompt
    if params.query_instruction and data.query_prompt and params.query_instruction != data.query_prompt:
        raise ValueError(
            f"params.query_instruction {params.query_instruction!r} differs from the training file's prompt "
            f"{data.query_prompt!r}: give one of them"
        )
    return EmbedderConfig(
        query_instruction=instruction,
        query_instruction_format=params.query_instruction_format,
        passage_instruction=params.passage_instruction,
        normalize=params.normalize,
        max_seq_length=params.passage_max_len,
        query_max_seq_length=params.query_max_len,
    )


def _use(model: SentenceTransformer, config: EmbedderConfig) -> None:
    """Cut passages and queries as ``config`` says (the base's saved lengths at step 0, the job's after)."""
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    set_query_length(model, config.query_max_seq_length or config.max_seq_length)


def _overrides(base: EmbedderConfig, used: EmbedderConfig) -> str:
    changed = [
        f"{name} {getattr(base, name)!r} -> {getattr(used, name)!r}"
        for name in EmbedderConfig.__dataclass_fields__
        if getattr(base, name) != getattr(used, name)
    ]
    if not changed:
        return "step 0 evaluates the base model with its saved configuration, which the job keeps"
    return "step 0 evaluates the base model with its saved configuration; from step 1 the job's params apply: " + (
        ", ".join(changed)
    )


def _embedder_loss(
    model: SentenceTransformer, params: EmbedderParams, distill: bool, gather: bool = False
) -> torch.nn.Module:
    """``gather``: in-batch negatives from every DDP rank's rows (the global batch), not this rank's only."""
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    from app.training.losses.cached_in_batch_distill import CachedInBatchDistillLoss
    from app.training.losses.in_batch_distill import InBatchDistillLoss

    scale = 1.0 / params.temperature
    if distill:  # also on resume: the saved rows say whether the first attempt distilled
        kd = {
            "distillation_weight": params.distillation_weight,
            "teacher_temperature": params.teacher_temperature,
            "gather_across_devices": gather,
        }
        if params.cached_loss:
            return CachedInBatchDistillLoss(model, scale=scale, mini_batch_size=params.mini_batch_size, **kd)
        return InBatchDistillLoss(model, scale=scale, **kd)
    # Train with the similarity search serves: cosine for normalised vectors, the inner product otherwise.
    similarity = util.cos_sim if params.normalize else util.dot_score
    if params.cached_loss:
        return losses.CachedMultipleNegativesRankingLoss(
            model, scale=scale, similarity_fct=similarity, mini_batch_size=params.mini_batch_size,
            gather_across_devices=gather,
        )  # fmt: skip
    return losses.MultipleNegativesRankingLoss(
        model, scale=scale, similarity_fct=similarity, gather_across_devices=gather
    )


def train_embedder(
    base_path: str,
    data: PreparedData,
    params: EmbedderParams,
    work_dir: Path,
    observer: TrainingObserver,
    device: str,
    base_config: EmbedderConfig | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    world: World | None = None,
    known_vectors: Callable[[], KnownVectors | None] | None = None,
) -> TrainingOutcome:
    """``base_config``: how the base model is used (its registry entry); default: read from the model itself.
    ``on_checkpoint(step)``: called after each checkpoint is saved in ``work_dir``.
    ``known_vectors``: asked once, by a first attempt, for the corpus as the base model already encoded it.
    ``world``: this is rank 0 of a DDP run (app.training.distributed); it alone evaluates, reports and saves,
    the other ranks (:func:`follow_embedder`) get its rows and train with it."""
    rng = random.Random(params.seed)
    precision = precision_message(device, precision_flags(device, params.precision))  # refused before any work
    work_dir.mkdir(parents=True, exist_ok=True)
    model = load_embedder(base_path, device)
    set_attention_dropout(model, params.attention_dropout)
    stop_if_asked(observer, "loading the model")
    base_config = base_config or saved_config(model)
    config = training_config(params, data)
    best_dir = chosen_dir(work_dir)
    best = BestModel(params.select_metric, save=lambda: replace_dir(best_dir, lambda path: model.save(str(path))))
    resume_from = last_checkpoint(work_dir)
    state = RunState.load(work_dir) if resume_from else None
    rows = load_rows(work_dir) if state else None
    last: dict[str, Any] = {}  # the newest validation evaluation's step and corpus vectors

    def evaluate(step: int, epoch: float) -> None:
        with served_forward(model):  # fp32, as served, also inside a bf16 run
            encoded = encode_corpus(model, config, data.corpus, observer.should_stop, f"the evaluation at step {step}")
            result = evaluate_queries(model, config, encoded, data.validation_queries, data.validation_qrels)
        _record(observer, step, epoch, result.metrics, data.split(VALIDATION_ROLE))
        best.offer(step, result.metrics)
        last.update(step=step, encoded=encoded)
        RunState(base_metrics=base_metrics, best_value=best.best_value, best_step=best.best_step,
                 base_test=base_test).save(work_dir)  # fmt: skip

    if state is not None and rows is not None and resume_from is not None:
        # Resuming: the base was measured and the rows were built by the first attempt.
        base_metrics, base_test = state.base_metrics, state.base_test
        best.base_value, best.best_value, best.best_step = (
            base_metrics[params.select_metric], state.best_value, state.best_step
        )  # fmt: skip
        observer.on_resume(checkpoint_step(resume_from))
        observer.on_message(f"resumed from checkpoint at step {checkpoint_step(resume_from)}")
    else:
        resume_from = None
        known = reused_encoding(known_vectors, list(data.corpus), observer, "step 0")
        base, base_test, rows, why = _measure_base_and_build_rows(model, base_config, data, params, observer, rng,
                                                                  known)  # fmt: skip
        base_metrics = base.metrics
        best.offer(0, base_metrics)
        RunState(base_metrics=base_metrics, base_test=base_test).save(work_dir)
        save_rows(work_dir, rows)
        observer.on_message(_overrides(base_config, config))
        observer.on_message(why)
    observer.on_message(precision)
    if world is not None:
        world.share((rows, str(resume_from) if resume_from else None, config))
    stop_if_asked(observer, "preparing the training")
    callback = ObserverCallback(observer, evaluate, params.eval_steps)
    callbacks = [callback, *([CheckpointSaved(on_checkpoint)] if on_checkpoint else [])]
    trainer = _fit(model, config, rows, params, work_dir, device, callbacks, resume_from, world)
    if callback.cancelled:
        raise TrainingCancelled(f"cancelled at step {trainer.state.global_step}")
    if callback.last_evaluated_step != trainer.state.global_step:
        evaluate(trainer.state.global_step, float(trainer.state.epoch or 0.0))
    verdict = _test_chosen(model, config, data, params, best, last, base_test, best_dir, device, observer)
    return TrainingOutcome.chosen(best_dir, config.to_dict(), best, verdict)


def follow_embedder(base_path: str, params: EmbedderParams, work_dir: Path, device: str, world: World) -> None:
    """A DDP rank other than 0: train on its share of each batch with rank 0's rows and resume point;
    it evaluates, reports and saves nothing (rank 0 does)."""
    model = load_embedder(base_path, device)
    set_attention_dropout(model, params.attention_dropout)
    rows, resume_from, config = world.share(None)
    _fit(model, config, rows, params, work_dir, device, [], resume_from, world)


def _fit(
    model: SentenceTransformer,
    config: EmbedderConfig,
    rows: dict[str, list[Any]],
    params: EmbedderParams,
    work_dir: Path,
    device: str,
    callbacks: list[Any],
    resume_from: Path | str | None,
    world: World | None,
) -> Any:
    """The sentence-transformers Trainer over ``rows``; in a DDP ``world`` it splits each batch of
    ``batch_size`` rows across the ranks and gathers the in-batch negatives back. Returns the trainer."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    _use(model, config)
    _set_prompts(model, config)
    train_dataset = Dataset.from_dict(rows)
    arguments = trainer_arguments(params, trainer_dir(work_dir), device, len(train_dataset))
    args = SentenceTransformerTrainingArguments(
        **arguments | checkpoint_arguments(params) | (world.trainer_arguments(arguments) if world else {}),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        # Queries are tokenised as task "query" (query_max_len, a Router model's query branch), the rest as documents.
        router_mapping={column: "query" if column == "anchor" else "document" for column in rows if column != "label"},
    )
    loss = _embedder_loss(model, params, "label" in rows, gather=world is not None and world.gather)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss,
        callbacks=[*callbacks, *(world.callbacks() if world else [])],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    unwrap_forward(trainer)
    return trainer


def _record(observer: TrainingObserver, step: int, epoch: float, metrics: dict[str, float], split: str) -> None:
    for name, value in metrics.items():
        observer.on_metric(step, epoch, name, value, split)


def _set_prompts(model: SentenceTransformer, config: EmbedderConfig) -> None:
    """Saved with the model, so people who load it elsewhere (encode_query) get the same prefixes.
    Retune itself applies them explicitly through EmbedderConfig, never through prompts."""
    if config.query_instruction or config.passage_instruction:
        model.prompts = {"query": config.format_query(""), "document": config.passage_instruction}
    else:
        model.prompts = {}


def _measure_base_and_build_rows(
    model: SentenceTransformer,
    base_config: EmbedderConfig,
    data: PreparedData,
    params: EmbedderParams,
    observer: TrainingObserver,
    rng: random.Random,
    known: CorpusVectors | None = None,
) -> tuple[Any, dict[str, dict[str, float]], dict[str, list[Any]], str]:
    """Step 0: the base model as it is used, on validation and test (one corpus encoding, or ``known``, the
    same vectors from an index); the training rows are mined from them. Test is touched here and once more,
    for the chosen model."""
    _use(model, base_config)
    encoded = known
    if encoded is None:
        observer.on_message(f"step 0: evaluating the base model (encoding {len(data.corpus)} documents)")
        encoded = encode_corpus(model, base_config, data.corpus, observer.should_stop, "the step-0 evaluation")
    validation = evaluate_queries(model, base_config, encoded, data.validation_queries, data.validation_qrels)
    test = evaluate_queries(model, base_config, encoded, data.eval_queries, data.eval_qrels)
    _record(observer, 0, 0.0, validation.metrics, data.split(VALIDATION_ROLE))
    _record(observer, 0, 0.0, test.metrics, data.split(TEST_ROLE))
    stop_if_asked(observer, "the step-0 evaluation")
    rows, teacher = _build_rows(model, base_config, data, params, encoded.vectors, encoded.doc_ids, rng)
    distill, why = _distillation_choice(teacher, data, params)
    if distill:
        rows["label"] = teacher  # [teacher(positive), teacher(negative_1), ...], the columns' order
    return validation, test.per_query or {}, rows, why


def _test_chosen(
    model: SentenceTransformer,
    config: EmbedderConfig,
    data: PreparedData,
    params: EmbedderParams,
    best: BestModel,
    last: dict[str, Any],
    base_test: dict[str, dict[str, float]],
    best_dir: Path,
    device: str,
    observer: TrainingObserver,
) -> Verdict:
    """The second and last touch of the test queries: the checkpoint validation chose, against the base.
    Its calibration is fitted first, on the validation queries, and saved in its folder."""
    if best.best_step is None:
        raise RuntimeError("training finished without an evaluated model to keep")
    if last.get("step") == best.best_step:
        chosen, encoded = model, last["encoded"]  # the model in memory is the chosen state
    else:
        chosen = load_embedder(str(best_dir), device)
        _use(chosen, config)
        encoded = encode_corpus(chosen, config, data.corpus, observer.should_stop, "the final test")
    validation = evaluate_queries(chosen, config, encoded, data.validation_queries, data.validation_qrels)
    calibration = calibrate_embedder(best_dir, validation.run, data.validation_qrels, params.relevance_min_grade)
    test = evaluate_queries(chosen, config, encoded, data.eval_queries, data.eval_qrels)
    _record(observer, best.best_step, 0.0, test.metrics, data.split(TEST_ROLE))
    report_embedder(observer, best.best_step, data.split(TEST_ROLE), test.run, data.eval_qrels, calibration,
                    params.relevance_min_grade)  # fmt: skip
    verdict = judge(base_test, test.per_query or {}, params.select_metric, data.split(TEST_ROLE), data.contaminated)
    observer.on_message(f"chosen on validation: step {best.best_step}; {verdict.sentence()}")
    return verdict


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
    excluded = judged_and_copies(data)
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
            query_vectors, train_ids, corpus_vectors, doc_ids, excluded,
            tuple(params.negative_rank_range), params.train_group_size - 1, params.seed, params.negative_sampling,
        )  # fmt: skip

    rows: dict[str, list[Any]] = {"anchor": [], "positive": []}
    teacher: list[list[float] | None] = []
    all_docs = list(data.corpus)  # listed once: per row it made building quadratic in the corpus size
    for i in range(params.train_group_size - 1):
        rows[f"negative_{i + 1}"] = []
    for qid, judged in data.train_qrels.items():
        query = config.format_query(data.train_queries[qid])
        for doc_id, grade in judged.items():
            if grade <= 0:
                continue
            negatives = _negatives_for(qid, data, mined, params, rng, excluded[qid], all_docs)
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
    if not params.normalize:
        return (
            False,
            f"{off} (the distillation term compares cosines; with normalize false the model serves dot products)",
        )
    if data.teacher_is_first_stage and params.knowledge_distillation == "auto":
        return False, (
            f"{off} (the teacher scores are a bi-encoder's cosines from a mine_negatives job: softmaxed at "
            "teacher_temperature 1 they are nearly flat; set knowledge_distillation 'on' with a teacher_temperature "
            "suited to them to distil anyway)"
        )
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
