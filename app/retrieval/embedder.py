"""Bi-encoder loading and encoding, with the query/passage instructions a model was trained with.

An instruction is a plain text prefix (FlagEmbedding's ``query_instruction_for_retrieval``); it is
applied by :func:`format_query` both when training and when searching, so the two never differ.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ingest.types import Document
from app.retrieval.batcher import Batcher, BatchLimits

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
    pad_multiple: int | None = None,
) -> np.ndarray:
    """``task`` ("query" | "document") picks a Router model's branch and the per-task length, as in training;
    ``pad_multiple``: pad each batch to a multiple of this many tokens (the tokenizer's ``pad_to_multiple_of``)."""
    if not texts:
        return np.zeros((0, model.get_embedding_dimension() or 0), dtype=np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=normalize,
        show_progress_bar=False,
        task=task,
        **padding_kwargs(pad_multiple),
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def padding_kwargs(pad_multiple: int | None) -> dict[str, Any]:
    """sentence-transformers' per-call tokenizer overrides (``processing_kwargs``) that pad to a multiple."""
    return {"processing_kwargs": {"text": {"pad_to_multiple_of": pad_multiple}}} if pad_multiple else {}


class PrivateTokenizer:
    """A copy of a model's tokenizer for request threads, used under a lock.

    A fast tokenizer is not thread-safe: every call sets the Rust tokenizer's truncation and padding, so
    a count (no truncation) running beside a batched pass (truncation, padding) makes that pass fail or
    tokenize unpadded. The batcher's one thread is the only user of the model's own tokenizer; requests
    count and cut their texts with this copy, one at a time.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[Any]:
        with self._lock:
            yield self._tokenizer


def token_lengths(tokenizer, texts: list[str] | list[tuple[str, str]], cap: int | None) -> list[int]:
    """Tokens per text (or (query, passage) pair) as the model reads them: special tokens in, cut at ``cap``."""
    if not texts:
        return []
    if isinstance(texts[0], tuple):
        first, second = [t[0] for t in texts], [t[1] for t in texts]
        ids = tokenizer(first, second, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    else:
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return [min(len(row), cap) if cap else len(row) for row in ids]


@dataclass(frozen=True)
class EncodeKey:
    """What rows must share to share a forward pass: the Router branch, normalisation and query length."""

    task: str | None
    normalize: bool
    query_length: int | None = None


def embedding_batcher(model: SentenceTransformer, name: str, limits: BatchLimits) -> Batcher:
    """A batcher whose passes are :func:`encode_texts` calls of one batch each."""

    def run(key: EncodeKey, texts: list[str]) -> np.ndarray:
        if key.task == "query":
            set_query_length(model, key.query_length)
        return encode_texts(model, texts, key.normalize, len(texts), key.task, limits.pad_multiple)

    return Batcher(name, run, limits)


def batched_encode(
    batcher: Batcher,
    model: SentenceTransformer,
    tokens: PrivateTokenizer,
    texts: list[str],
    key: EncodeKey,
    lengths: list[int] | None = None,
) -> np.ndarray:
    """``texts`` (already formatted) encoded through ``batcher``; ``lengths``: their token counts, if known."""
    if not texts:
        return encode_texts(model, [], key.normalize)
    if lengths is None:
        with tokens.use() as tokenizer:
            lengths = token_lengths(tokenizer, texts, _length_cap(model, key))
    return batcher.run(key, texts, lengths)


def batched_queries(
    batcher: Batcher, model: SentenceTransformer, tokens: PrivateTokenizer, config: EmbedderConfig, queries: list[str]
) -> np.ndarray:
    """:func:`encode_queries` through a batcher: the same instruction, normalisation and query length."""
    key = EncodeKey("query", config.normalize, config.query_max_seq_length)
    return batched_encode(batcher, model, tokens, [config.format_query(q) for q in queries], key)


def _length_cap(model: SentenceTransformer, key: EncodeKey) -> int | None:
    query_length = key.query_length or getattr(model[0], "query_length", None)
    return (query_length if key.task == "query" else None) or model.max_seq_length


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
