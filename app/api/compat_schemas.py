"""Bodies of the OpenAI-, Cohere- and TEI-compatible routes, shaped as those APIs (and infinity) shape them.

Unknown fields are ignored, as those services do: clients send fields of their own (``user``,
``rank_fields``, ...) that change nothing here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import RETRY_AFTER

Lenient = ConfigDict(extra="ignore")

# --- OpenAI ------------------------------------------------------------------------------------------


class EmbeddingsIn(BaseModel):
    model_config = Lenient

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts. Token ids are refused (Retune tokenises with the model's tokenizer)."
    )
    model: str = Field(description="A Retune model id, a model's name, or an alias pointing at a model.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: the little-endian float32 bytes of each vector (the OpenAI SDK's default)."
    )
    dimensions: int | None = Field(None, ge=1, description="Keep the first N components, re-normalised.")
    user: str | None = None
    input_type: Literal["query", "document", "search_query", "search_document"] = Field(
        "document", description="query: the model's query instruction is applied, as in training and /search."
    )


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class UsageOut(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: UsageOut


class ModelCardOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str = Field(description="embedder (for /v1/embeddings) or reranker (for /v2/rerank).")


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCardOut]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorBody


# --- Cohere ------------------------------------------------------------------------------------------


class RerankDocumentIn(BaseModel):
    model_config = Lenient

    text: str


class RerankIn(BaseModel):
    model_config = Lenient

    model: str = Field(description="A Retune reranker id, its name, or an alias pointing at it.")
    query: str
    documents: list[str | RerankDocumentIn] = Field(description="Texts (v1 also takes {'text': ...} objects).")
    top_n: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(None, ge=1, description="Cut each document to this many tokens.")
    return_documents: bool = False

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankedDocumentOut(BaseModel):
    text: str


class RerankResultOut(BaseModel):
    index: int
    relevance_score: float
    document: RerankedDocumentOut | None = None


class ApiVersionOut(BaseModel):
    version: str


class BilledUnitsOut(BaseModel):
    search_units: int


class RerankMetaOut(BaseModel):
    api_version: ApiVersionOut
    billed_units: BilledUnitsOut
    score_type: Literal["calibrated", "sigmoid"] = Field(
        description="calibrated: the model's calibrated probability; sigmoid: sigmoid of the raw logit."
    )


class RerankOut(BaseModel):
    id: str
    results: list[RerankResultOut] = Field(description="Best first.")
    meta: RerankMetaOut


class CohereErrorOut(BaseModel):
    message: str


# --- Text Embeddings Inference -----------------------------------------------------------------------


class TeiEmbedIn(BaseModel):
    model_config = Lenient

    inputs: str | list[str] | list[int] | list[list[int]]
    normalize: bool = True
    truncate: bool | None = Field(None, description="false: a text over the model's length is a 413; else cut.")
    prompt_name: str | None = Field(None, description="'query' applies the model's query instruction.")
    dimensions: int | None = Field(None, ge=1)


class TeiRerankIn(BaseModel):
    model_config = Lenient

    query: str
    texts: list[str]
    raw_scores: bool = Field(False, description="true: raw logits; false: calibrated probability or sigmoid.")
    return_text: bool = False
    truncate: bool | None = None


class TeiRankOut(BaseModel):
    index: int
    score: float
    text: str | None = None


class TeiInfoOut(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str


class TeiErrorOut(BaseModel):
    error: str
    error_type: str


def error_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of one route family, each in that family's shape."""
    texts = {
        400: "Malformed body, or token ids instead of text",
        401: "Missing, invalid or revoked API key",
        403: "The key's scope does not allow this operation",
        404: "No such model",
        413: "Too many inputs, or a text over the length bound",
        422: "Invalid request (the message names what)",
        429: "The model's queue is full; retry after Retry-After",
        503: "The database is unreachable; retry shortly",
    }
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": model, "description": text} for code, text in texts.items()
    }
    responses[429]["headers"] = RETRY_AFTER
    return responses
