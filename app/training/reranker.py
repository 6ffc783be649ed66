"""Cross-encoder reranker training from any body (by default the bundled MiniLM with a new head).

Groups are one query's judged passages plus unjudged passages mined from a first-stage embedder.
Default loss is listwise (ListNet: cross-entropy between softmax(grades * label_scale) and
softmax(scores)), which uses graded labels as grades: treating every grade > 0 as "positive" is
what made other tools' rerankers collapse. Pointwise BCE is available for comparison.

Evaluation is two-stage, as the reranker is used: the first-stage embedder's top ``recall_k`` on the
held-out queries, reranked, and (with ``first_stage_weight`` > 0, the default) ordered by the fused
score search will serve. The bar to beat is the first stage alone: a model whose served order does
not improve on it is marked as not better than base. The collapse watch looks at the reranker's own
scores, fusion or not.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.evaluation.metrics import mean_metrics, per_query_metrics
from app.evaluation.retrieval import (
    CorpusVectors,
    KnownVectors,
    best_fusion_weight,
    encode_corpus,
    evaluate_queries,
    evaluate_reranker,
)
from app.evaluation.verdict import Verdict, judge
from app.retrieval.embedder import EmbedderConfig, encode_queries, load_embedder, passage_text
from app.retrieval.reranker import HEAD_PATTERN, load_reranker, untrained_head_weights
from app.training.calibrate import calibrate_reranker, calibrated_order, report_reranker
from app.training.callbacks import BestModel, CheckpointSaved, ObserverCallback
from app.training.checkpoints import (
    RunState,
    checkpoint_step,
    chosen_dir,
    last_checkpoint,
    load_first_stage_run,
    load_rows,
    replace_dir,
    save_first_stage_run,
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
    trainer_arguments,
    unwrap_forward,
)
from app.training.data import TEST_ROLE, VALIDATION_ROLE, PreparedData, judged_and_copies, mine_scored_negatives
from app.training.observer import TrainingCancelled, TrainingObserver, stop_if_asked
from app.training.params import RerankerParams
from app.training.pseudo_queries import PseudoQuery, cut_pseudo_queries

if TYPE_CHECKING:
    import torch
    from sentence_transformers import CrossEncoder

# Collapse watch: logits whose per-query spread is below this carry no ranking.
COLLAPSE_STD = 1e-2
# ...and a reranker that halves the first stage's metric has wrecked the search.
COLLAPSE_METRIC_RATIO = 0.5
NEW_HEAD_LEARNING_RATE = 2e-3


@dataclass
class FirstStage:
    """What the first-stage embedder gives a reranker job, from one corpus encoding."""

    metrics: dict[str, float]  # on the validation queries: the bar the reranker must beat
    run: dict[str, dict[str, float]]  # validation query -> its top candidates and scores
    negatives: dict[str, list[str]]  # training query -> unjudged candidates for its group
    scores: dict[str, dict[str, float]]  # training query -> passage -> first-stage score (the teacher)
    pseudo_queries: list[PseudoQuery]  # cut from the corpus (``pseudo_queries``); in negatives and scores too
    test_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    test_run: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    test_per_query: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def is_collapsed(score_std: float, metric: float, first_stage_metric: float) -> bool:
    """The collapse watch's rule: no spread left in the scores, or far below the first stage."""
    return score_std < COLLAPSE_STD or metric < COLLAPSE_METRIC_RATIO * first_stage_metric


@dataclass
class _Run:
    """One reranker job's state shared by its evaluations: the data, the first stage and what was chosen."""

    data: PreparedData
    params: RerankerParams
    observer: TrainingObserver
    candidate_config: EmbedderConfig
    first_metrics: dict[str, float]
    runs: dict[str, dict[str, dict[str, float]]]  # role -> the first stage's candidates
    base_test: dict[str, dict[str, float]]
    fusion_weights: dict[str, float]  # str(step) -> the weight used at that evaluation
    best: BestModel
    best_dir: Path
    candidate_id: str  # the first stage's id: its calibration map applies over its indexes (and this job's runs)
    best_validation_run: dict[str, dict[str, float]] | None = None  # the chosen state's logits, for calibration
    stop: Callable[[], None] = lambda: None

    def weight_at(self, step: int | None) -> float:
        if self.params.first_stage_weight != "auto":
            return float(self.params.first_stage_weight)
        return self.fusion_weights.get(str(step), 0.5)

    def save(self, work_dir: Path) -> None:
        RunState(
            base_metrics=self.first_metrics, best_value=self.best.best_value, best_step=self.best.best_step,
            fusion_weights=self.fusion_weights, base_test=self.base_test,
        ).save(work_dir)  # fmt: skip


def train_reranker(
    base_path: str,
    data: PreparedData,
    params: RerankerParams,
    work_dir: Path,
    observer: TrainingObserver,
    device: str,
    candidate_path: str,
    candidate_config: EmbedderConfig,
    candidate_id: str | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    known_vectors: Callable[[], KnownVectors | None] | None = None,
) -> TrainingOutcome:
    """``candidate_id``: the first-stage embedder's registered id (the calibration records it; default its
    path). The job's own test order reads the calibration's map for this id, so it must never be None:
    a calibration fitted for no first stage would serve the job's runs with its reranker-only map;
    ``on_checkpoint(step)``: called after each checkpoint is saved in ``work_dir``;
    ``known_vectors``: asked once, by a first attempt, for the corpus as the candidate already encoded it."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    precision = precision_message(device, precision_flags(device, params.precision))  # refused before any work
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = last_checkpoint(work_dir)
    state = RunState.load(work_dir) if resume_from else None
    rows = load_rows(work_dir) if state else None
    runs = load_first_stage_run(work_dir) if state else None
    if state is None or rows is None or runs is None or resume_from is None:
        resume_from, state = None, None
        rows, runs, first_metrics, base_test = _start(data, params, device, candidate_path, candidate_config,
                                                      observer, work_dir, known_vectors)  # fmt: skip
    else:  # resuming: the first stage was measured and the rows built by the first attempt
        first_metrics, base_test = state.base_metrics, state.base_test

    new_head = bool(untrained_head_weights(base_path))
    from transformers import set_seed

    set_seed(params.seed)  # a new head is drawn at load time, before the trainer seeds anything
    model = load_reranker(base_path, device, params.max_length)
    stop_if_asked(observer, "loading the model")
    best_dir = chosen_dir(work_dir)
    best = BestModel(params.select_metric, save=lambda: replace_dir(best_dir, lambda path: model.save(str(path))))
    best.base_value = first_metrics[params.select_metric]  # the first stage alone is the bar
    run = _Run(data, params, observer, candidate_config, first_metrics, runs, base_test,
               dict(state.fusion_weights) if state is not None else {}, best, best_dir,
               candidate_id or candidate_path)  # fmt: skip

    def evaluate(step: int, epoch: float) -> None:
        with served_forward(model):  # fp32, as served, also inside a mixed-precision run
            _evaluate_on_validation(model, run, step, epoch)
        run.save(work_dir)

    if state is not None and resume_from is not None:
        best.best_value, best.best_step = state.best_value, state.best_step
        observer.on_resume(checkpoint_step(resume_from))
        observer.on_message(f"resumed from checkpoint at step {checkpoint_step(resume_from)}")
    else:
        evaluate(0, 0.0)

    from datasets import Dataset

    train_dataset = Dataset.from_dict(rows)
    stop_if_asked(observer, "preparing the training")
    observer.on_message(precision)
    args = CrossEncoderTrainingArguments(
        **trainer_arguments(params, trainer_dir(work_dir), device, len(train_dataset))
        | checkpoint_arguments(params)
        | _batching(params, rows),
        learning_rate_mapping={HEAD_PATTERN: head_learning_rate(params, new_head)},
    )
    callback = ObserverCallback(observer, evaluate, params.eval_steps)
    run.stop = lambda: setattr(callback, "stop_requested", True)
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=_loss(params, model),
        callbacks=[callback, *([CheckpointSaved(on_checkpoint)] if on_checkpoint else [])],
    )
    trainer.train(resume_from_checkpoint=resume_from)
    unwrap_forward(trainer)
    if callback.cancelled:
        raise TrainingCancelled(f"cancelled at step {trainer.state.global_step}")
    if callback.last_evaluated_step != trainer.state.global_step:
        evaluate(trainer.state.global_step, float(trainer.state.epoch or 0.0))
    if best.best_step is None:
        raise RuntimeError("training finished without an evaluated model to keep")
    chosen = model if best.best_step == trainer.state.global_step else load_reranker(str(best_dir), device)
    verdict = _test_chosen(chosen, run)
    config = {
        "max_length": params.max_length,
        "candidate_model": params.candidate_model,
        "loss": params.loss,
        # auto: the weight chosen (on validation) at the best step: the one search will use with this model
        "first_stage_weight": run.weight_at(best.best_step),
    }
    return TrainingOutcome.chosen(best_dir, config, best, verdict)


def _start(
    data: PreparedData,
    params: RerankerParams,
    device: str,
    candidate_path: str,
    candidate_config: EmbedderConfig,
    observer: TrainingObserver,
    work_dir: Path,
    known_vectors: Callable[[], KnownVectors | None] | None = None,
) -> tuple[dict[str, list[Any]], dict[str, dict[str, dict[str, float]]], dict[str, float], dict]:
    """A first attempt: the first stage on validation and test (the base: measured once here), the rows."""
    encoded = reused_encoding(known_vectors, list(data.corpus), observer, "first stage")
    first = _first_stage(data, params, device, candidate_path, candidate_config, observer.should_stop, encoded)
    runs = {VALIDATION_ROLE: first.run, TEST_ROLE: first.test_run}
    save_first_stage_run(work_dir, runs)
    rows = _training_rows(
        with_pseudo_queries(data, first.pseudo_queries), params, first.negatives, candidate_config,
        random.Random(params.seed), first.scores,
    )  # fmt: skip
    save_rows(work_dir, rows)
    for role, metrics in ((VALIDATION_ROLE, first.metrics), (TEST_ROLE, first.test_metrics)):
        for name, value in metrics.items():
            observer.on_metric(0, 0.0, name, value, data.split(role, "/first_stage"))
    return rows, runs, first.metrics, first.test_per_query


def _evaluate_on_validation(model: CrossEncoder, run: _Run, step: int, epoch: float) -> None:
    """Every choice is made here, on validation: the fusion weight ('auto'), collapse, the best checkpoint."""
    data, params, observer = run.data, run.params, run.observer
    auto = params.first_stage_weight == "auto"
    result = evaluate_reranker(
        model, run.runs[VALIDATION_ROLE], data.corpus, data.validation_queries, data.validation_qrels,
        params.recall_k, run.candidate_config.format_query, 0.0 if auto else float(params.first_stage_weight),
        observer.should_stop, f"the evaluation at step {step}",
    )  # fmt: skip
    weight, fused_metrics = run.weight_at(None), result.fused_metrics
    if auto:  # the same logits, fused at every grid weight: no extra model call
        weight, fused_metrics = best_fusion_weight(
            run.runs[VALIDATION_ROLE], result.run, data.validation_qrels, params.recall_k, params.select_metric
        )
    run.fusion_weights[str(step)] = weight
    split = data.split(VALIDATION_ROLE)
    for name, value in result.metrics.items():
        observer.on_metric(step, epoch, name, value, split)
    for name, value in (fused_metrics or {}).items():
        observer.on_metric(step, epoch, name, value, data.split(VALIDATION_ROLE, "/fused"))
    if fused_metrics is not None:
        observer.on_metric(step, epoch, "first_stage_weight", weight, data.split(VALIDATION_ROLE, "/fused"))
    observer.on_metric(step, epoch, "score_std", result.score_std, split)
    observer.on_metric(step, epoch, "positive_share", result.positive_share, split)
    _watch_collapse(run, step, epoch, result.score_std, result.metrics[params.select_metric])
    if step > 0:  # the fused order when the model keeps a first-stage weight
        run.best.offer(step, fused_metrics if fused_metrics is not None else result.metrics)
        if run.best.best_step == step:
            run.best_validation_run = result.run


def _watch_collapse(run: _Run, step: int, epoch: float, score_std: float, metric: float) -> None:
    params, bar = run.params, run.first_metrics[run.params.select_metric]
    collapsed = step > 0 and is_collapsed(score_std, metric, bar)
    run.observer.on_metric(step, epoch, "collapsed", float(collapsed), run.data.split(VALIDATION_ROLE))
    if collapsed:
        run.observer.on_message(
            f"collapse warning at step {step}: score spread {score_std:.4f}, {params.select_metric} {metric:.4f} "
            f"vs first stage {bar:.4f}" + ("; training stopped (stop_on_collapse)" if params.stop_on_collapse else "")
        )
        if params.stop_on_collapse:
            run.stop()


def _test_chosen(model: CrossEncoder, run: _Run) -> Verdict:
    """The second and last touch of the test queries: the chosen checkpoint, served as search serves it
    (by its calibrated score, fitted here on validation; fused at its weight without one), against the
    first stage alone (the base, measured at step 0)."""
    data, params, step = run.data, run.params, run.best.best_step or 0
    weight = run.weight_at(step)
    calibration = calibrate_reranker(
        run.best_dir, run.runs[VALIDATION_ROLE], _validation_logits(model, run), data.validation_qrels,
        params.recall_k, params.relevance_min_grade, run.candidate_id,
    )  # fmt: skip
    result = evaluate_reranker(
        model, run.runs[TEST_ROLE], data.corpus, data.eval_queries, data.eval_qrels, params.recall_k,
        run.candidate_config.format_query, weight, run.observer.should_stop, "the final test",
    )  # fmt: skip
    test_split = data.split(TEST_ROLE)
    for name, value in result.metrics.items():
        run.observer.on_metric(step, 0.0, name, value, test_split)
    for name, value in (result.fused_metrics or {}).items():
        run.observer.on_metric(step, 0.0, name, value, data.split(TEST_ROLE, "/fused"))
    served = result.served_per_query  # each order is scored once: the calibrated one only when calibrated
    if calibration is not None:
        ordered = calibrated_order(run.runs[TEST_ROLE], result.run, params.recall_k, calibration, run.candidate_id)
        served = per_query_metrics(data.eval_qrels, ordered)
        for name, value in mean_metrics(served).items():
            run.observer.on_metric(step, 0.0, name, value, data.split(TEST_ROLE, "/served"))
    report_reranker(run.observer, step, test_split, run.runs[TEST_ROLE], result.run, data.eval_qrels,
                    params.recall_k, calibration, run.candidate_id, weight, params.relevance_min_grade)  # fmt: skip
    verdict = judge(run.base_test, served, params.select_metric, test_split, data.contaminated)
    run.observer.on_message(f"chosen on validation: step {step} (first_stage_weight {weight:g}); {verdict.sentence()}")
    return verdict


def _validation_logits(model: CrossEncoder, run: _Run) -> dict[str, dict[str, float]]:
    """The chosen state's validation logits: kept from its evaluation, or (after a resume) scored again."""
    if run.best_validation_run is not None:
        return run.best_validation_run
    data = run.data
    return evaluate_reranker(
        model,
        run.runs[VALIDATION_ROLE],
        data.corpus,
        data.validation_queries,
        data.validation_qrels,
        run.params.recall_k,
        run.candidate_config.format_query,
        should_stop=run.observer.should_stop,
        stage="the final test",
    ).run


def _batching(params: RerankerParams, rows: dict[str, list[Any]]) -> dict[str, int]:
    """Rows per forward pass and passes per optimiser step: ``batch_size`` rows a step either way.

    A listwise row is one query's whole group, so a pass holds ``rows x group_size`` sequences of up
    to ``max_length`` tokens; their activations, kept for the backward pass, dominate memory (about
    8 GB for the defaults' 64 sequences of 256 tokens on a CPU). Two rows a pass by default: the same
    optimiser step, a fraction of the memory, no slower on a CPU (measured in docs/training.md).
    """
    batch = min(params.batch_size, len(rows["query"]))
    mini = min(params.mini_batch_size or (2 if batch % 2 == 0 else 1), batch)
    return {"per_device_train_batch_size": mini, "gradient_accumulation_steps": max(1, batch // mini)}


def head_learning_rate(params: RerankerParams, new_head: bool) -> float:
    """``head_learning_rate``, else 2e-3 for a new head and the body's rate for a trained one.

    A new head starts at weights of about 0.02: at the body's rate it moves too little in the tens of
    steps a small job has, and its near-constant scores hardly steer the body. Measured: docs/benchmarks.md
    ("How fast a new head learns").
    """
    if params.head_learning_rate is not None:
        return params.head_learning_rate
    return NEW_HEAD_LEARNING_RATE if new_head else params.learning_rate


def _first_stage(
    data: PreparedData,
    params: RerankerParams,
    device: str,
    candidate_path: str,
    candidate_config: EmbedderConfig,
    should_stop: Callable[[], bool] | None = None,
    encoded: CorpusVectors | None = None,
) -> FirstStage:
    """One corpus encoding (``encoded`` when it exists already) gives the evaluation candidates (and their
    metrics), the training negatives and the first stage's scores of the training passages (the teacher,
    for ``first_stage_temperature``)."""
    embedder = load_embedder(candidate_path, device, candidate_config.max_seq_length)
    if encoded is None:
        stage = "the step-0 (first-stage) evaluation"
        encoded = encode_corpus(embedder, candidate_config, data.corpus, should_stop, stage)
    # At least 100 candidates, so recall@100 is recall at 100 (the reranker reorders the top recall_k).
    depth = max(params.recall_k, 100)
    first = evaluate_queries(
        embedder, candidate_config, encoded, data.validation_queries, data.validation_qrels, top_k=depth
    )
    test = evaluate_queries(embedder, candidate_config, encoded, data.eval_queries, data.eval_qrels, top_k=depth)
    train_ids = list(data.train_queries)
    query_vectors = encode_queries(embedder, candidate_config, [data.train_queries[q] for q in train_ids])
    candidate_ranks = negative_ranks(params)  # where a group's unjudged passages are drawn from
    mined = mine_scored_negatives(
        query_vectors, train_ids, first.corpus_vectors, first.doc_ids, judged_and_copies(data),
        candidate_ranks, params.group_size, params.seed,
        max_score=_false_negative_ceilings(query_vectors, train_ids, first, data, params.false_negative_margin),
    )  # fmt: skip
    # The first stage's score of every passage a training group can hold: mined and judged.
    row_of = {doc: row for row, doc in enumerate(first.doc_ids)}
    teacher = {
        qid: dict(mined[qid])
        | {d: float(vector @ first.corpus_vectors[row_of[d]]) for d in data.train_qrels.get(qid, {}) if d in row_of}
        for qid, vector in zip(train_ids, query_vectors, strict=True)
    }
    pseudo = cut_pseudo_queries(data.corpus, params.pseudo_queries, params.seed) if params.pseudo_queries else []
    if pseudo:
        pseudo_vectors = encode_queries(embedder, candidate_config, [p.query for p in pseudo])
        mined |= mine_scored_negatives(
            pseudo_vectors, [p.id for p in pseudo], first.corpus_vectors, first.doc_ids,
            {p.id: {p.source_doc} for p in pseudo}, candidate_ranks, params.group_size, params.seed,
        )  # fmt: skip
        # The positive (its passage less the query sentence) is scored as its whole passage.
        for p, vector in zip(pseudo, pseudo_vectors, strict=True):
            teacher[p.id] = dict(mined[p.id]) | {
                p.positive.id: float(vector @ first.corpus_vectors[row_of[p.source_doc]])
            }
    negatives = {qid: [d for d, _ in pairs] for qid, pairs in mined.items()}
    return FirstStage(
        first.metrics, first.run, negatives, teacher, pseudo, test.metrics, test.run, test.per_query or {}
    )


def negative_ranks(params: RerankerParams) -> tuple[int, int]:
    """``negative_rank_range``, else the first stage's ranks [0, max(4 x group_size, 30))."""
    if params.negative_rank_range is not None:
        return params.negative_rank_range[0], params.negative_rank_range[1]
    return 0, max(params.group_size * 4, 30)


def _false_negative_ceilings(
    query_vectors: Any, train_ids: list[str], first: Any, data: PreparedData, margin: float | None
) -> dict[str, float] | None:
    """Per query, the lowest first-stage score of its positives minus ``margin``: a candidate above it is
    more likely an unjudged positive than a negative (the same rule as ``mine_negatives``)."""
    if margin is None:
        return None
    row_of = {doc: row for row, doc in enumerate(first.doc_ids)}
    ceilings = {}
    for qid, vector in zip(train_ids, query_vectors, strict=True):
        scores = [float(vector @ first.corpus_vectors[row_of[d]]) for d, g in data.train_qrels[qid].items()
                  if g > 0 and d in row_of]  # fmt: skip
        if scores:
            ceilings[qid] = min(scores) - margin
    return ceilings


def with_pseudo_queries(data: PreparedData, pseudo: list[PseudoQuery]) -> PreparedData:
    """The training data plus the pseudo-queries as judged queries: each one's positive gets the top grade
    of the data (it is as relevant as a passage can be to a sentence cut from it)."""
    if not pseudo:
        return data
    top_grade = max(max(data.grades, default=1), 1)
    return dataclasses.replace(
        data,
        corpus=data.corpus | {p.positive.id: p.positive for p in pseudo},
        train_queries=data.train_queries | {p.id: p.query for p in pseudo},
        train_qrels=data.train_qrels | {p.id: {p.positive.id: top_grade} for p in pseudo},
    )


def _training_rows(
    data: PreparedData,
    params: RerankerParams,
    mined: dict[str, list[str]],
    candidate_config: EmbedderConfig,
    rng: random.Random,
    teacher: dict[str, dict[str, float]] | None = None,
) -> dict[str, list[Any]]:
    """The loss's rows. A group is one query's judged passages (best grades first) + mined negatives.

    With ``first_stage_temperature`` each listwise target adds the first stage's score / temperature
    (``teacher``; a passage it did not score gets the group's lowest), so the unjudged passages are
    ordered too: many graded targets a group instead of a few.
    """
    queries, groups, labels = [], [], []
    for qid, judged in data.train_qrels.items():
        query = candidate_config.format_query(data.train_queries[qid])
        negatives = [d for d in mined.get(qid, []) if d not in judged]
        if not negatives:
            negatives = [d for d in rng.sample(list(data.corpus), min(len(data.corpus), 8)) if d not in judged][:1]
        by_grade = sorted(judged.items(), key=lambda kv: -kv[1])
        if params.loss == "group_softmax":
            # One group per positive: it must beat group_size - 1 negatives (judged grade-0 docs first).
            pool = [d for d, g in by_grade if g <= 0] + negatives
            for doc, grade in by_grade:
                if grade > 0:
                    queries.append(query)
                    groups.append([passage_text(data.corpus[d]) for d in [doc, *pool[: params.group_size - 1]]])
                    labels.append([1.0] + [0.0] * min(len(pool), params.group_size - 1))
            continue
        # Judged passages fill at most half the group (more when negatives are scarce): the rest are
        # unjudged candidates like most of what the reranker reorders at search time. On Cranfield
        # (8 judged documents a query) judged passages alone used to fill whole groups.
        judged_slots = max(params.group_size // 2, params.group_size - len(negatives))
        docs = [d for d, _ in by_grade][:judged_slots]
        grades = [float(max(g, 0)) for _, g in by_grade][: len(docs)]
        docs += negatives[: params.group_size - len(docs)]
        grades += [0.0] * (len(docs) - len(grades))
        if params.first_stage_temperature is not None and teacher is not None:
            scores = teacher.get(qid, {})
            floor = min(scores.values(), default=0.0)
            grades = [
                g + scores.get(d, floor) / params.first_stage_temperature / params.label_scale
                for d, g in zip(docs, grades, strict=True)
            ]
        queries.append(query)
        groups.append([passage_text(data.corpus[d]) for d in docs])
        labels.append(grades)

    if params.loss == "bce":
        pairs = [
            (q, d, float(g > 0))
            for q, ds, ls in zip(queries, groups, labels, strict=True)
            for d, g in zip(ds, ls, strict=True)
        ]
        return {"query": [p[0] for p in pairs], "doc": [p[1] for p in pairs], "label": [p[2] for p in pairs]}
    if params.loss == "group_softmax":
        # ListNet against a one-hot target is exactly the group softmax (cross-entropy, positive first):
        # softmax([0, -inf, ...]) = [1, 0, ...].
        targets = [[0.0 if g > 0 else float("-inf") for g in ls] for ls in labels]
    else:
        targets = [[g * params.label_scale for g in ls] for ls in labels]
    return {"query": queries, "docs": groups, "labels": targets}


def _loss(params: RerankerParams, model: CrossEncoder) -> torch.nn.Module:
    from sentence_transformers.cross_encoder import losses

    if params.loss == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    return losses.ListNetLoss(model)  # listwise and group_softmax differ only in their targets
