"""The process-wide cache of loaded models, indexes and corpora, shared by every serving route.

``/search``, the OpenAI-compatible ``/v1/embeddings``, the Cohere-compatible ``/v2/rerank`` and the TEI
routes all load through here, so a model is loaded once per process and every route uses the same copy
(with the same settings: the index's or the model's recorded ``EmbedderConfig``, never a guess). Each
loaded model comes with its batcher (app.retrieval.batcher): concurrent requests share its forward passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.db.tables import Dataset, Index, Model
from app.ingest import Document, read_retrieval_set
from app.retrieval.backends.choice import load_choice
from app.retrieval.backends.loading import apply_backend
from app.retrieval.backends.spec import BackendUnavailable, Kind
from app.retrieval.batcher import Batcher, BatchLimits
from app.retrieval.cache import LoadedCache
from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig, PrivateTokenizer, embedding_batcher, load_embedder
from app.retrieval.quantization import maybe_int8
from app.retrieval.reranker import default_rerank_batch_size, ensure_trained_head, load_reranker, rerank_batcher
from app.retrieval.vector_index import VectorIndex
from app.services import storage
from app.services.indexes import load_index_dir
from app.services.models import model_path

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

log = logging.getLogger(__name__)


@lru_cache
def _cache(capacity: int) -> LoadedCache:
    return LoadedCache(capacity)


def loaded_cache(settings: Settings) -> LoadedCache:
    """The one cache of this process (models, plus a few indexes and corpora beside them)."""
    return _cache(settings.model_cache_size + 4)


def _load_checked_reranker(path: str, name: str, device: str, max_length: int | None, force: bool) -> CrossEncoder:
    if not force:
        ensure_trained_head(path, name)
    return load_reranker(path, device, max_length)


def index(settings: Settings, row: Index) -> tuple[VectorIndex, EmbedderConfig]:
    """A built index and the embedder settings it was built with."""
    index_dir = str(storage.local_copy(settings, row.path))
    return loaded_cache(settings).get(("index", index_dir), lambda: load_index_dir(Path(index_dir)))


@dataclass(frozen=True)
class Served:
    """A loaded model, the batcher through which every request's forward passes go, and the tokenizer copy
    request threads count and cut texts with (the model's own is the batcher's alone: not thread-safe)."""

    model: Any
    batcher: Batcher
    tokens: PrivateTokenizer


def batch_limits(settings: Settings, max_rows: int) -> BatchLimits:
    return BatchLimits(
        max_wait_ms=settings.batch_max_wait_ms,
        max_batch_tokens=settings.batch_max_tokens,
        max_batch_rows=max_rows,
        max_queued_texts=settings.batch_max_queued_texts,
        retry_after_seconds=settings.batch_retry_after_seconds,
    )


def on_chosen_backend(settings: Settings, model: Any, path: str, kind: Kind, int8: bool) -> Any:
    """``model`` on the backend its gate chose (``serving_backend.json``); torch fp32 when none passed, and
    when a request asks for the int8 path (``int8``: the torch int8 path, as before backends were chosen)."""
    choice = load_choice(path)
    if int8 or choice.parsed.is_reference:
        return maybe_int8(model, int8)
    try:
        return apply_backend(model, Path(path), choice.parsed, kind, settings.torch_threads)
    except BackendUnavailable as exc:
        log.warning("model %s: %s chosen, but unavailable here (%s): served by torch fp32", path, choice.backend, exc)
        return model


def served_embedder(settings: Settings, row: Model, max_seq_length: int | None, int8: bool = False) -> Served:
    path = model_path(settings, row)
    device = resolve_device(settings.device)

    def load() -> Served:
        model = on_chosen_backend(settings, load_embedder(path, device, max_seq_length), path, "embedder", int8)
        batcher = embedding_batcher(model, row.id, batch_limits(settings, settings.batch_max_rows))
        return Served(model, batcher, PrivateTokenizer(model.tokenizer))

    return loaded_cache(settings).get(("embedder", path, int8), load)


def embedder(settings: Settings, row: Model, max_seq_length: int | None, int8: bool = False) -> SentenceTransformer:
    return served_embedder(settings, row, max_seq_length, int8).model


def served_reranker(settings: Settings, row: Model, force: bool = False, int8: bool = False) -> Served:
    """A cross-encoder, refused (UntrainedHeadError) when its head was never trained, unless ``force``."""
    path = model_path(settings, row)
    device = resolve_device(settings.device)
    max_length = row.config.get("max_length")

    def load() -> Served:
        loaded = _load_checked_reranker(path, row.id, device, max_length, force)
        model = on_chosen_backend(settings, loaded, path, "reranker", int8)
        rows = settings.rerank_batch_size or default_rerank_batch_size(model.device.type)
        return Served(
            model, rerank_batcher(model, row.id, batch_limits(settings, rows)), PrivateTokenizer(model.tokenizer)
        )

    return loaded_cache(settings).get(("reranker", path, force, int8), load)


def reranker(settings: Settings, row: Model, force: bool = False, int8: bool = False) -> CrossEncoder:
    """A cross-encoder, refused (UntrainedHeadError) when its head was never trained, unless ``force``."""
    return served_reranker(settings, row, force, int8).model


def corpus(settings: Settings, dataset: Dataset) -> dict[str, Document]:
    return loaded_cache(settings).get(
        ("corpus", dataset.path), lambda: read_retrieval_set(storage.local_copy(settings, dataset.path)).corpus
    )
