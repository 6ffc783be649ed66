"""OpenAI-compatible embeddings (``openai``, LangChain's OpenAIEmbeddings, LlamaIndex's OpenAIEmbedding)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter

from app.api.compat_schemas import (
    EmbeddingOut,
    EmbeddingsIn,
    EmbeddingsOut,
    ModelCardOut,
    ModelListOut,
    OpenAIErrorOut,
    UsageOut,
    error_responses,
)
from app.api.deps import DbSession, ReadAccess, SettingsDep
from app.core.errors import TokenIdsInputError
from app.services import compat
from app.services.model_refs import usable_models

router = APIRouter(prefix="/v1", tags=["openai-compatible"], responses=error_responses(OpenAIErrorOut))


def texts_of(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The texts of ``input``; token ids (what tiktoken-based clients send) are refused with a 400."""
    if isinstance(value, str):
        return [value]
    if any(not isinstance(item, str) for item in value):
        raise TokenIdsInputError(
            "input is token ids; Retune needs the texts (it tokenises with the model's own tokenizer). "
            "With LangChain's OpenAIEmbeddings pass check_embedding_ctx_length=False."
        )
    return list(value)  # type: ignore[arg-type]


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """base64: the little-endian float32 bytes, as the OpenAI SDK decodes them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


@router.post("/embeddings", response_model=EmbeddingsOut, dependencies=[ReadAccess])
def create_embeddings(body: EmbeddingsIn, db: DbSession, settings: SettingsDep) -> EmbeddingsOut:
    """Embed texts; `input_type: "query"` applies the model's query instruction (as /search does)."""
    input_type = compat.QUERY if body.input_type in ("query", "search_query") else compat.DOCUMENT
    result = compat.embed(db, settings, body.model, texts_of(body.input), input_type, body.dimensions)
    data = [EmbeddingOut(index=i, embedding=encoded(v, body.encoding_format)) for i, v in enumerate(result.vectors)]
    usage = UsageOut(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingsOut(data=data, model=body.model, usage=usage)


@router.get("/models", response_model=ModelListOut, dependencies=[ReadAccess])
def list_models(db: DbSession) -> ModelListOut:
    """Embedders and rerankers, by Retune model id (any id, name or model alias is accepted as `model`)."""
    cards = [
        ModelCardOut(id=m.id, created=int(m.created_at.timestamp()), owned_by="retune", kind=m.kind)
        for m in usable_models(db)
    ]
    return ModelListOut(data=cards)
