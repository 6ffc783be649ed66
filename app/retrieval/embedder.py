"""Bi-encoder loading and encoding, with the query/passage instructions a model was trained with.

An instruction is a plain text prefix (FlagEmbedding's ``query_instruction_for_retrieval``); it is
applied by :func:`format_query` both when training and when searching, so the two never differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ingest.types import Document

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class EmbedderConfig:
    """How to use an embedder. Stored with every model and index; search uses exactly this."""

    query_instruction: str = ""
    query_instruction_format: str = "{}{}"
    passage_instruction: str = ""
    normalize: bool = True
    max_seq_length: int | None = None
    query_max_seq_length: int | None = None  # None: the model's own (its saved query_length, else max_seq_length)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EmbedderConfig:
        data = data or {}
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def format_query(self, query: str) -> str:
        if not self.query_instruction:
            return query
        return self.query_instruction_format.format(self.query_instruction, query)

    def format_passage(self, doc: Document | str) -> str:
        text = passage_text(doc) if isinstance(doc, Document) else doc
        return f"{self.passage_instruction}{text}" if self.passage_instruction else text


def passage_text(doc: Document) -> str:
    """BEIR's convention: title and text joined by a space."""
    return f"{doc.title} {doc.text}".strip() if doc.title else doc.text


def load_embedder(
    path: str, device: str, max_seq_length: int | None = None, attn_implementation: str | None = None
) -> SentenceTransformer:
    """``attn_implementation``: transformers' attention path ("eager", "sdpa"); None keeps transformers' choice."""
    from sentence_transformers import SentenceTransformer

    # safetensors only: a pickled checkpoint can run code when loaded.
    model_kwargs: dict[str, Any] = {"use_safetensors": True}
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    model = SentenceTransformer(path, device=device, trust_remote_code=False, model_kwargs=model_kwargs)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def saved_config(model: SentenceTransformer) -> EmbedderConfig:
    """How a model folder says it is used: its saved prompts, normalisation and lengths (for a base model that
    Retune's registry does not describe, so that its step-0 evaluation measures it as it is served elsewhere)."""
    from sentence_transformers.base.modules.normalize import Normalize

    prompts = model.prompts or {}
    query_length = getattr(model[0], "query_length", None)
    return EmbedderConfig(
        query_instruction=prompts.get("query", ""),
        passage_instruction=prompts.get("document", prompts.get("passage", "")),
        normalize=any(isinstance(module, Normalize) for module in model),
        max_seq_length=model.max_seq_length,
        query_max_seq_length=query_length if query_length != model.max_seq_length else None,
    )


def encode_texts(
    model: SentenceTransformer,
    texts: list[str],
    normalize: bool,
    batch_size: int = 64,
    task: str | None = None,
) -> np.ndarray:
    """``task`` ("query" | "document") picks a Router model's branch and the per-task length, as in training."""
    if not texts:
        return np.zeros((0, model.get_embedding_dimension() or 0), dtype=np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=normalize,
        show_progress_bar=False,
        task=task,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def encode_queries(model: SentenceTransformer, config: EmbedderConfig, queries: list[str]) -> np.ndarray:
    set_query_length(model, config.query_max_seq_length)
    return encode_texts(model, [config.format_query(q) for q in queries], config.normalize, task="query")


def set_query_length(model: SentenceTransformer, tokens: int | None) -> None:
    """Cut queries at ``tokens`` (sentence-transformers' ``Transformer.query_length``, saved with the model
    and applied to every ``task="query"`` input, so ``encode_query`` elsewhere cuts them the same way)."""
    module = model[0]
    if tokens is not None and hasattr(module, "query_length") and module.query_length != tokens:
        module.query_length = tokens


class EncodingStopped(Exception):
    """Raised by :func:`encode_passages` when its ``should_stop`` said so between two chunks."""


PASSAGE_CHUNK_BATCHES = 2  # batches between two ``should_stop`` checks (128 passages: seconds on a CPU)


def encode_passages(
    model: SentenceTransformer,
    config: EmbedderConfig,
    docs: list[Document],
    batch_size: int = 64,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """With ``should_stop``: encoded in chunks, checked before each one (a long encoding can be cancelled);
    with ``on_progress``: called after each chunk with (passages encoded, total)."""
    # Sorting by length keeps padding low inside each batch (a large speed-up on CPU).
    passages = [config.format_passage(d) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: len(passages[i]))
    passages = [passages[i] for i in order]
    if should_stop is None and on_progress is None:
        encoded = encode_texts(model, passages, config.normalize, batch_size, task="document")
    else:
        encoded = _encode_in_chunks(
            model, passages, config.normalize, batch_size, should_stop or (lambda: False), on_progress
        )
    out = np.empty_like(encoded)
    out[order] = encoded
    return out


def _encode_in_chunks(
    model: SentenceTransformer,
    passages: list[str],
    normalize: bool,
    batch_size: int,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Length-sorted ``passages``, longest first in whole multiples of ``batch_size``: sentence-transformers
    batches the longest first too, so the batches, and the vectors, are those of one call."""
    size = batch_size * PASSAGE_CHUNK_BATCHES
    parts: list[np.ndarray] = []
    for end in range(len(passages), 0, -size):
        if should_stop():
            raise EncodingStopped(f"{len(passages) - end} of {len(passages)} passages encoded")
        parts.insert(0, encode_texts(model, passages[max(0, end - size) : end], normalize, batch_size, "document"))
        if on_progress is not None:
            on_progress(len(passages) - max(0, end - size), len(passages))
    return np.concatenate(parts) if parts else encode_texts(model, [], normalize)
