"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.core.config import get_settings
from app.training.params import EmbedderParams, MiningParams, RerankerParams, ServingBackendParams

_SETTINGS = get_settings()  # the process's configured search bounds appear in the schema


class ErrorOut(BaseModel):
    """Every error answer of Retune's routes. ``detail`` is one sentence; ``field`` the (first) bad field's
    dotted path, e.g. ``params.batch_size``; upload errors also name the file and line."""

    detail: str
    file: str | None = None
    line: int | None = None
    field: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "The body could not be parsed (not JSON, not multipart)",
        401: "Missing, invalid or revoked API key",
        403: "The key's scope does not allow this operation",
        404: "No such resource",
        409: "The resource is not in a state that allows this",
        413: "Over a configured size bound",
        422: "Invalid request or upload (the message names what)",
        503: "The database or the task queue is unreachable; retry shortly",
    }.items()
}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
BUSY_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorOut,
        "description": "The model's queue is full; retry after Retry-After",
        "headers": RETRY_AFTER,
    },
}


class Orm(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetOut(Orm):
    id: str
    name: str
    format: str
    stats: dict[str, Any]
    created_at: datetime


class ModelOut(Orm):
    id: str
    name: str
    kind: str
    source: str
    base_model: str | None
    job_id: str | None
    config: dict[str, Any]
    better_than_base: bool | None = Field(description="verdict.result == 'better' (None when not measured).")
    verdict: dict[str, Any] | None = Field(
        None,
        description="Base vs this model on its job's test queries, per query and paired: metric, base, final, "
        "delta, ci_low / ci_high (95% bootstrap), queries, result (better: the whole interval above 0; worse: "
        "below 0; else not_better), contaminated.",
    )
    created_at: datetime
    calibration: dict[str, Any] | None = Field(
        None,
        description="The fitted score calibration (method, maps with their features and fitted-on counts, "
        "relevance_min_grade, top_n, first_stage_model); null when none was fitted (see calibration_missing).",
    )
    calibration_missing: str | None = Field(
        None, description="Why the model has no calibration (then `/search` refuses a `threshold` on it)."
    )
    serving_backend: dict[str, Any] | None = Field(
        None,
        description="The runtime backend search serves this model with (backend: torch-fp32, onnx-int8, ...), why, "
        "and gate: the validation nDCG@10 change vs torch-fp32 with its 95% interval that let it pass (1% gate).",
    )

    file_name: str | None = Field(None, description="source 'upload': the uploaded archive's file name.")
    download_url: str | None = Field(None, description="GET it for a .tar.gz of the folder (?format=zip for a zip).")

    @model_validator(mode="after")
    def _download_url(self) -> ModelOut:
        self.download_url = self.download_url or f"/models/{self.id}/download"
        return self


class EvalSpecIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    split: str | None = Field(
        None,
        description="The TEST queries: a qrels split of a BEIR dataset, e.g. 'test'. "
        "Reported only: evaluated for the base model and the chosen one, never used to choose.",
    )
    holdout_fraction: float | None = Field(
        None, description="Else: share of training queries held out as the test queries (default 0.2)."
    )
    seed: int = 42
    max_queries: int | None = Field(None, ge=1, description="Evaluate a seeded sample of the held-out queries.")
    max_corpus_docs: int | None = Field(
        None, ge=1, description="Evaluate against all judged docs plus a seeded sample of the others, up to this many."
    )
    validation_split: str | None = Field(
        None, description="A qrels split whose queries make every choice (checkpoint, weights, calibration)."
    )
    validation_fraction: float | None = Field(
        None,
        gt=0,
        le=0.5,
        description="Else: this share of the training queries, set aside by seed (default 0.1, "
        "at least 20 queries, at most half).",
    )
    max_validation_queries: int | None = Field(None, ge=1, description="A seeded sample of the validation queries.")
    allow_overlap: bool = Field(
        False,
        description="Evaluate even on queries the base or candidate model was trained on; every metric is then "
        "labelled contaminated.",
    )


class _JobInBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_id: str
    base_model: str | None = Field(
        None, description="Model id, local directory or Hugging Face id (mine_negatives: the embedder that ranks)."
    )
    eval: EvalSpecIn = Field(default_factory=EvalSpecIn, description="Not allowed for mine_negatives.")


class EmbedderJobIn(_JobInBase):
    kind: Literal["embedder"] = Field(description="Fine-tune a bi-encoder (embedding model).")
    params: EmbedderParams = Field(default_factory=EmbedderParams)


class RerankerJobIn(_JobInBase):
    kind: Literal["reranker"] = Field(description="Train a cross-encoder reranker.")
    params: RerankerParams = Field(default_factory=RerankerParams)


class MiningJobIn(_JobInBase):
    kind: Literal["mine_negatives"] = Field(
        description="No training; writes a new training dataset with hard negatives mined by base_model "
        "(see output_dataset_id)."
    )
    params: MiningParams = Field(default_factory=MiningParams)


class ServingBackendJobIn(_JobInBase):
    kind: Literal["serving_backend"] = Field(
        description="No training; runs the 1% backend gate on the existing model base_model (a Retune model "
        "id or name) over the dataset's validation queries, and serves it on the backend that passes."
    )
    params: ServingBackendParams = Field(default_factory=ServingBackendParams)


# Discriminated on `kind`: the OpenAPI schema shows each kind's params (components EmbedderParams, ...).
JobIn = Annotated[EmbedderJobIn | RerankerJobIn | MiningJobIn | ServingBackendJobIn, Field(discriminator="kind")]
JOB_KINDS = frozenset({"embedder", "reranker", "mine_negatives", "serving_backend"})


class JobOut(Orm):
    id: str
    kind: str
    status: str
    dataset_id: str
    base_model: str
    params: dict[str, Any]
    eval: dict[str, Any]
    model_id: str | None
    output_dataset_id: str | None = Field(None, description="The training dataset a mine_negatives job wrote.")
    better_than_base: bool | None = None
    verdict: dict[str, Any] | None = Field(None, description="The produced model's verdict (see ModelOut).")
    step: int
    total_steps: int | None
    attempts: int
    message: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(None, description="Last sign of life from the worker running it.")
    stalled: bool = Field(
        False, description="running, but no heartbeat for RETUNE_JOB_STALE_SECONDS: its worker died or hangs."
    )
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step the latest attempt resumed from (the step shown restarted there)."
    )

    @model_validator(mode="after")
    def _mark_stalled(self) -> JobOut:
        from app.core.config import get_settings
        from app.services.supervision import is_stalled

        self.stalled = is_stalled(self.status, self.heartbeat_at, get_settings().job_stale_seconds)
        return self

    estimated_finish: datetime | None = Field(
        None, description="Running jobs: when it should finish at its step rate since started_at."
    )


class MetricPointOut(Orm):
    step: int
    epoch: float
    name: str
    value: float
    split: str


class MetricsOut(BaseModel):
    job_id: str
    points: list[MetricPointOut]


class CheckpointOut(BaseModel):
    step: int
    epoch: float
    metrics: dict[str, float] = Field(description="Its validation figures (the fused order for a fusing reranker).")
    chosen: bool = Field(description="The job's model (finished), or the best so far by select_metric (running).")


class CheckpointsOut(BaseModel):
    job_id: str
    chosen_step: int | None
    checkpoints: list[CheckpointOut] = Field(description="Every validation evaluation, step 0 (the base) first.")


class IndexIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_id: str
    model_id: str
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="auto: exact (flat) up to 200,000 documents, HNSW above."
    )


class IndexOut(Orm):
    id: str
    dataset_id: str
    model_id: str
    status: str
    index_type: str
    memory_bytes: int | None
    num_docs: int | None
    docs_encoded: int | None = Field(None, description="While building: passages encoded so far, of num_docs.")
    dim: int | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class AliasIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["index_id"], "not": {"required": ["model_id"]}},
                {"required": ["model_id"], "not": {"required": ["index_id"]}},
            ]
        },
    )

    # SkipJsonSchema: the schema says "a string, when given" (an explicit null is refused like an absent one).
    index_id: str | SkipJsonSchema[None] = Field(None, description="A ready index (for /search).")
    model_id: str | SkipJsonSchema[None] = Field(
        None, description="A model (for /v1/embeddings, /v2/rerank, /tei), not an index."
    )

    @model_validator(mode="after")
    def _one_target(self) -> AliasIn:
        if (self.index_id is None) == (self.model_id is None):
            raise ValueError("give exactly one of 'index_id' or 'model_id'")
        return self


class AliasOut(Orm):
    name: str
    index_id: str | None
    model_id: str | None = None
    updated_at: datetime


class SearchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["query"], "not": {"required": ["queries"]}},
                {"required": ["queries"], "not": {"required": ["query"]}},
            ]
        },
    )

    index_id: str = Field(description="An index id or an alias name.")
    query: str | None = Field(None, min_length=1, max_length=10_000)
    queries: list[Annotated[str, Field(min_length=1, max_length=10_000)]] | None = Field(
        None, min_length=1, description="Several queries in one call (instead of `query`)."
    )
    top_k: int = Field(10, ge=1, le=_SETTINGS.max_top_k, description="RETUNE_MAX_TOP_K bounds it.")
    recall_k: int = Field(100, ge=1, le=_SETTINGS.max_recall_k, description="RETUNE_MAX_RECALL_K bounds it.")
    reranker_id: str | None = None
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Minimum calibrated score, P(relevant) (0..1). 422 when the scoring model (the reranker, else "
        "the index's embedder) has no fitted calibration.",
    )
    return_text: bool = True
    force: bool = Field(False, description="Use a reranker even if its head was never trained.")
    int8: bool = Field(False, description="CPU: dynamically int8-quantised models (faster, slightly less exact).")
    first_stage_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Score fusion: order reranked hits by w * first stage + (1 - w) * reranker, each min-max "
        "normalised over the query's candidates. Default: the reranker's own (set by its training job), 0 for "
        "older models. The threshold still applies to `score`.",
    )

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> SearchIn:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of 'query' or 'queries'")
        return self


class SearchHitOut(BaseModel):
    doc_id: str
    text: str | None
    score: float = Field(
        description="With a calibration (`calibrated: true`): P(relevant | query, document), fitted on the model's "
        "validation queries; hits are ordered by it and `threshold` applies to it. Without one: sigmoid(rerank "
        "logit) when reranked, else the recall (cosine) score; neither is a probability."
    )
    recall_score: float
    rerank_score: float | None = Field(description="Raw reranker logit.")
    fused_score: float | None = Field(
        None, description="With score fusion: the fused 0..1 score that orders the hits (within this query only)."
    )


class SearchOut(BaseModel):
    index_id: str = Field(description="The index version that answered (an alias is resolved once).")
    results: list[SearchHitOut] = Field(description="The hits of `query` (of the first query with `queries`).")
    batch: list[list[SearchHitOut]] | None = Field(None, description="With `queries`: one list per query.")
    calibrated: bool = Field(
        False, description="Whether `score` is a calibrated P(relevant) (the scoring model has a fitted calibration)."
    )
    calibration_map: str | None = Field(
        None,
        description="Which calibration map scored: first_stage (embedder), with_first_stage (reranker over an index "
        "of the embedder it was calibrated with) or reranker_only (any other index).",
    )


class WorkerOut(Orm):
    name: str = Field(description="The Celery node name and the worker's pid: new at each start.")
    queues: str = Field(description="The queues it consumes, comma-separated.")
    seen_at: datetime


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="ok: database and broker reachable and every queue has a live worker; degraded otherwise."
    )
    database: Literal["ok"] = Field(description="Unreachable database: the answer is a 503 instead.")
    broker: Literal["ok", "unreachable"]
    queues: dict[str, int] = Field(description="Live workers consuming each queue (gpu and cpu queue names).")
    workers: list[WorkerOut]


class JobEventOut(Orm):
    """One thing that happened to a job (the shape of OpenAI's fine-tuning events)."""

    id: int = Field(description="Increasing per service: the `after` cursor and the SSE `id` / `Last-Event-ID`.")
    created_at: datetime
    level: Literal["info", "warn", "error"]
    type: Literal["message", "metrics", "status"]
    message: str
    data: dict[str, Any] | None = Field(
        None, description="status: {status}; metrics: {step, split, <name>: value, ...}; message: null."
    )


class JobEventsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventOut]
    has_more: bool
