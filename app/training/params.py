"""Job parameters, validated up front so that a typo is a 422 and not a failed job an hour later.

Names follow FlagEmbedding / sentence-transformers where they exist (see docs/training.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.retrieval.backends.spec import parse_backend


class TrainingParams(BaseModel):
    # strict: `"seed": false` or `"epochs": "2"` is refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)

    epochs: float = Field(2.0, gt=0, le=100)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    learning_rate: float = Field(3e-5, gt=0, le=1e-2)
    warmup_ratio: float = Field(0.1, ge=0, le=0.5)
    weight_decay: float = Field(0.01, ge=0, le=1)
    seed: int = 42
    logging_steps: int = Field(5, ge=1, description="Loss is recorded every this many steps.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate on the held-out split every this many steps (also at 0 and the end)."
    )
    select_metric: Literal["ndcg@10", "recall@100", "mrr@10"] = "ndcg@10"
    relevance_min_grade: int = Field(
        1, ge=1, le=100, description="Calibration: a judgement of at least this grade counts as relevant."
    )
    checkpoint_steps: int = Field(
        100, ge=1, description="Save model, optimizer, scheduler, step and RNG every this many steps (for resume)."
    )
    train_split: str = Field("train", description="BEIR qrels split to train on.")
    max_train_queries: int | None = Field(None, ge=1, description="Train on a seeded sample of this many queries.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training steps' precision. bf16: autocast (weights, optimiser and saved model stay fp32) on a "
        "CUDA GPU with bf16 or a CPU with AMX / AVX512-BF16, else the job fails; fp32: full precision; auto: bf16 "
        "or fp16 AMP on CUDA, fp32 on CPU (docs/training.md, Precision).",
    )


class EmbedderParams(TrainingParams):
    # Chosen by earlier SciFact runs scored on its test split, not yet re-derived on validation queries
    # (docs/benchmarks.md, "Embedder fine-tuning"): a small set gives few steps.
    learning_rate: float = Field(5e-5, gt=0, le=1e-2)
    batch_size: int = Field(32, ge=2, le=4096)
    # 0.05: scale 20, what all-MiniLM-L6-v2 was trained with (docs/benchmarks.md). BGE-style models
    # trained at 0.02 may want 0.02.
    temperature: float = Field(0.05, gt=0, le=1, description="Softmax temperature; scale = 1/temperature.")
    train_group_size: int = Field(2, ge=1, le=64, description="1 positive + N-1 hard negatives per query.")
    hard_negatives: Literal["auto", "dataset", "mine", "none"] = Field(
        "auto",
        description="auto: the dataset's negatives when it has them, else mined from the base model.",
    )
    negative_rank_range: list[int] = Field(
        default_factory=lambda: [10, 50], min_length=2, max_length=2, description="Mined negatives: ranks [lo, hi)."
    )
    # top: compared with random on SciFact test in earlier runs, not yet on validation (docs/benchmarks.md).
    negative_sampling: Literal["random", "top"] = Field(
        "top", description="Mined negatives: the rank window's best-ranked ones, or drawn at random from it."
    )
    passage_max_len: int = Field(256, ge=16, le=8192)
    query_max_len: int | None = Field(
        None,
        ge=8,
        le=8192,
        description="Tokens per query, in training and in search (saved with the model); default: passage_max_len.",
    )
    query_instruction: str = Field("", max_length=1000)
    query_instruction_format: str = Field("{}{}", max_length=100)
    passage_instruction: str = Field("", max_length=1000)
    normalize: bool = True
    cached_loss: bool = Field(
        True,
        description="GradCache (CachedMultipleNegativesRankingLoss): the same gradient as the plain loss, computed "
        "in passes of mini_batch_size texts, so memory no longer grows with batch_size (docs/training.md, Memory).",
    )
    attention_dropout: float | None = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on attention probabilities while training; null keeps the model's own (0.1 for "
        "MiniLM). 0 lets torch's fused attention kernel run, which keeps no attention matrices for backward "
        "(docs/training.md, Memory).",
    )
    mini_batch_size: int = Field(16, ge=1, le=4096, description="Texts per GradCache pass (cached_loss).")
    knowledge_distillation: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: add a KL term to the teacher's pos_scores/neg_scores when every training row has a "
        "teacher score for its positive and each of its negatives (the negatives come from the dataset), unless "
        "the scores are a mine_negatives job's bi-encoder cosines; on: also then; off: contrastive loss only.",
    )
    distillation_weight: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Weight of the KL term; 1.0 adds it to the contrastive loss (FlagEmbedding kl_div).",
    )
    teacher_temperature: float = Field(
        1.0, ge=0.001, le=1000, description="The teacher's scores are divided by this before their softmax."
    )
    devices: Annotated[int, Field(ge=1, le=64)] | Annotated[list[str], Field(min_length=1, max_length=64)] = Field(
        1,
        description="Train on this many devices of the worker's machine with torch DDP, one process each (a count: "
        "the first N GPUs, or N CPU processes on a machine without one), or on these devices (['cuda:0', "
        "'cuda:1']). batch_size is the global batch: each device takes batch_size / devices rows, and the in-batch "
        "negatives are gathered across devices (docs/training.md, Several devices).",
    )

    @property
    def device_count(self) -> int:
        return self.devices if isinstance(self.devices, int) else len(self.devices)

    @model_validator(mode="after")
    def _check(self) -> EmbedderParams:
        _check_devices(self.devices, self.batch_size)
        lo, hi = self.negative_rank_range
        if not 0 <= lo < hi:
            raise ValueError("negative_rank_range must be (lo, hi) with 0 <= lo < hi")
        try:
            probe = self.query_instruction_format.format("\x00", "\x01")
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"query_instruction_format is not a valid format string: {exc}") from exc
        if probe.count("\x00") != 1 or probe.count("\x01") != 1:
            raise ValueError("query_instruction_format must place the instruction and the query once each, e.g. '{}{}'")
        return self


_DEVICE = re.compile(r"cpu|cuda:\d{1,2}")


def _check_devices(devices: int | list[str], batch_size: int) -> None:
    """The form of ``devices``; whether the worker has those GPUs is checked where the job runs."""
    count = devices if isinstance(devices, int) else len(devices)
    if isinstance(devices, list):
        wrong = [d for d in devices if not _DEVICE.fullmatch(d)]
        if wrong:
            raise ValueError(f"devices: {wrong} are not devices; give 'cpu' or 'cuda:<index>' entries")
        if len({d.split(":")[0] for d in devices}) > 1:
            raise ValueError("devices: give only CUDA devices or only 'cpu' entries, not both")
        cuda = [d for d in devices if d != "cpu"]
        if len(set(cuda)) != len(cuda):
            raise ValueError("devices: a CUDA device is named twice (one process per device)")
    if batch_size % count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {count} devices: each device takes batch_size / devices "
            "rows of every batch"
        )


class RerankerParams(TrainingParams):
    learning_rate: float = Field(1e-4, gt=0, le=1e-2)
    batch_size: int = Field(8, ge=1, le=1024, description="Queries per batch (each with its group).")
    loss: Literal["listwise", "group_softmax", "bce"] = Field(
        "listwise",
        description="listwise: softmax cross-entropy against softmax(grade * label_scale); "
        "group_softmax: FlagEmbedding's 1 positive among group_size (every grade > 0 a positive); bce: pointwise.",
    )
    label_scale: float = Field(2.0, gt=0, le=50)
    group_size: int = Field(8, ge=2, le=128, description="Passages per query: its judged ones + mined negatives.")
    candidate_model: str | None = Field(
        None, description="Embedder that mines negatives and gives evaluation candidates (default: bundled)."
    )
    recall_k: int = Field(100, ge=1, le=1000, description="First-stage candidates reranked at evaluation.")
    max_length: int = Field(256, ge=16, le=8192)
    mini_batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Queries per forward/backward pass; the gradients of batch_size / mini_batch_size passes make one "
        "optimiser step (the same step, a fraction of the activation memory). Default: 2 (1 for an odd batch_size).",
    )
    first_stage_temperature: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Distil the first stage: add its scores / this temperature to every target, so each "
        "passage of a group has a graded target (null: judgements only).",
    )
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        le=1e-1,
        description="Learning rate of the classification head (pooler + classifier); default: 2e-3 for a new "
        "head, learning_rate for a trained one.",
    )
    pseudo_queries: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Add up to this many pseudo-queries cut from the corpus (a sentence as the query, the rest of "
        "its passage as the positive, negatives mined like the judged queries') to the training groups.",
    )
    first_stage_weight: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = Field(
        0.5,
        description="Score fusion: search orders the reranked candidates by w * first stage + (1 - w) * reranker "
        "(each min-max normalised per query); evaluations score that order (split '<eval>/fused') and pick the best "
        "checkpoint by it; the model keeps w for search. 0: the reranker's order alone. 'auto': at each evaluation "
        "the weight of 0, 0.1, ..., 1 that scores best on the evaluation queries by select_metric.",
    )
    negative_rank_range: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="First-stage ranks [lo, hi) a group's unjudged passages are drawn from; default [0, max(4 x "
        "group_size, 30)). Search reranks the top recall_k: [0, recall_k) trains on the depth it serves.",
    )
    false_negative_margin: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Leave out a candidate scoring above (the query's lowest positive's first-stage score - margin) "
        "as a likely unjudged positive; null keeps them.",
    )
    stop_on_collapse: bool = Field(
        False, description="End training at the first evaluation the collapse watch flags (it is flagged either way)."
    )

    @model_validator(mode="after")
    def _check(self) -> RerankerParams:
        if self.mini_batch_size is not None and self.batch_size % self.mini_batch_size:
            raise ValueError("batch_size must be a multiple of mini_batch_size")
        if self.negative_rank_range is not None and not 0 <= self.negative_rank_range[0] < self.negative_rank_range[1]:
            raise ValueError("negative_rank_range must be (lo, hi) with 0 <= lo < hi")
        if self.loss == "bce" and self.first_stage_temperature is not None:
            # bce's labels are grade > 0: the teacher's score added to grade 0 would make every passage a positive.
            raise ValueError("first_stage_temperature grades listwise targets; loss 'bce' takes 0/1 labels only")
        return self


class MiningParams(BaseModel):
    """A ``mine_negatives`` job: rank the corpus with ``base_model``, keep negatives from a rank window.

    Not a TrainingParams: nothing is trained, so there are no optimiser, evaluation or checkpoint fields.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    negative_rank_range: list[int] = Field(
        default_factory=lambda: [10, 100],
        min_length=2,
        max_length=2,
        description="Negatives are drawn from the model's ranks [lo, hi) (0 = the best-scoring document).",
    )
    negatives_per_query: int = Field(7, ge=1, le=64, description="Taken from that window per `negative_sampling`.")
    negative_sampling: Literal["random", "top"] = Field(
        "random", description="random: drawn by seed from the window; top: its best-ranked candidates."
    )
    false_negative_margin: float | None = Field(
        0.05,
        ge=0,
        le=2,
        description="Drop a candidate scoring above (the query's lowest positive score - margin) as a likely "
        "false negative; null keeps them.",
    )
    passage_max_len: int | None = Field(
        None, ge=16, le=8192, description="Tokens per text; default: the model's own (as search uses it)."
    )
    train_split: str = Field("train", description="BEIR qrels split whose queries are mined.")
    seed: int = 42

    @model_validator(mode="after")
    def _check(self) -> MiningParams:
        lo, hi = self.negative_rank_range
        if not 0 <= lo < hi <= 10_000:
            raise ValueError("negative_rank_range must be (lo, hi) with 0 <= lo < hi <= 10000")
        return self


class ServingBackendParams(BaseModel):
    """A ``serving_backend`` job: the end-of-job 1% gate, run on a model that already exists (uploaded, or
    trained while ``RETUNE_SERVING_BACKENDS`` was empty), on the dataset's validation queries.

    Nothing is trained and the test queries are never scored: the gate compares a backend with the same
    model in torch fp32, so only the validation role is used.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    backends: list[str] | None = Field(
        None,
        min_length=1,
        description="Backends tried; the fastest that passes serves (torch-int8, torch-bf16, onnx-fp32, onnx-int8, "
        "openvino-fp32, openvino-int8); default: RETUNE_SERVING_BACKENDS, or every int8 and fp32 export when "
        "that is empty.",
    )
    tolerance: float | None = Field(
        None, ge=0, lt=1, description="Largest relative validation nDCG@10 loss; default RETUNE_SERVING_GATE_TOLERANCE."
    )
    min_speedup: float | None = Field(
        None,
        ge=0,
        description="How many times as fast as torch fp32 a backend must be on the gate's scoring; "
        "default RETUNE_SERVING_GATE_MIN_SPEEDUP.",
    )
    candidate_model: str | None = Field(
        None, description="A reranker's first stage: the embedder whose top rerank_k it reorders (default: bundled)."
    )
    rerank_k: int = Field(100, ge=1, le=1000, description="A reranker's candidates per validation query.")
    train_split: str = Field("train", description="BEIR qrels split the validation queries are set aside from.")

    @model_validator(mode="after")
    def _known_backends(self) -> ServingBackendParams:
        if self.backends is not None:
            self.backends = [parse_backend(label).label for label in self.backends]
        return self
