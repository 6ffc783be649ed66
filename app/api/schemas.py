"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema


class ErrorOut(BaseModel):
    """Every error answer. ``detail`` is a sentence, or FastAPI's list of validation problems;
    upload errors also name the file, line and field."""

    detail: str | list[dict[str, Any]]
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
    better_than_base: bool | None
    created_at: datetime


class EvalSpecIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    split: str | None = Field(None, description="A qrels split of a BEIR dataset, e.g. 'test'.")
    holdout_fraction: float | None = Field(None, description="Share of training queries held out (default 0.2).")
    seed: int = 42
    max_queries: int | None = Field(None, ge=1, description="Evaluate a seeded sample of the held-out queries.")
    max_corpus_docs: int | None = Field(
        None, ge=1, description="Evaluate against all judged docs plus a seeded sample of the others, up to this many."
    )


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["embedder", "reranker", "mine_negatives"] = Field(
        description="mine_negatives: no training; writes a new training dataset with hard negatives "
        "mined by base_model (see output_dataset_id)."
    )
    dataset_id: str
    base_model: str | None = Field(
        None, description="Model id, local directory or Hugging Face id (mine_negatives: the embedder that ranks)."
    )
    eval: EvalSpecIn = Field(default_factory=EvalSpecIn, description="Not allowed for mine_negatives.")
    params: dict[str, Any] = Field(default_factory=dict)


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
    step: int
    total_steps: int | None
    attempts: int
    message: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class MetricPointOut(Orm):
    step: int
    epoch: float
    name: str
    value: float
    split: str


class MetricsOut(BaseModel):
    job_id: str
    points: list[MetricPointOut]


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
    top_k: int = Field(10, ge=1)
    recall_k: int = Field(100, ge=1)
    reranker_id: str | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Minimum normalised score (0..1).")
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
    score: float = Field(description="sigmoid(rerank logit) when reranked, else the recall (cosine) score.")
    recall_score: float
    rerank_score: float | None = Field(description="Raw reranker logit.")
    fused_score: float | None = Field(
        None, description="With score fusion: the fused 0..1 score that orders the hits (within this query only)."
    )


class SearchOut(BaseModel):
    index_id: str = Field(description="The index version that answered (an alias is resolved once).")
    results: list[SearchHitOut] = Field(description="The hits of `query` (of the first query with `queries`).")
    batch: list[list[SearchHitOut]] | None = Field(None, description="With `queries`: one list per query.")
