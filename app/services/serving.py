"""The process-wide cache of loaded models, indexes and corpora, shared by every serving route.

``/search``, the OpenAI-compatible ``/v1/embeddings``, the Cohere-compatible ``/v2/rerank`` and the TEI
routes all load through here, so a model is loaded once per process and every route uses the same copy
(with the same settings: the index's or the model's recorded ``EmbedderConfig``, never a guess).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.config import Settings
from app.db.tables import Dataset, Index, Model
from app.ingest import Document, read_retrieval_set
from app.retrieval.cache import LoadedCache
from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.retrieval.quantization import maybe_int8
from app.retrieval.reranker import ensure_trained_head, load_reranker
from app.retrieval.vector_index import VectorIndex
from app.services import storage
from app.services.indexes import META_FILE
from app.services.models import model_path

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer


@lru_cache
def _cache(capacity: int) -> LoadedCache:
    return LoadedCache(capacity)


def loaded_cache(settings: Settings) -> LoadedCache:
    """The one cache of this process (models, plus a few indexes and corpora beside them)."""
    return _cache(settings.model_cache_size + 4)


def _load_index(directory: str) -> tuple[VectorIndex, EmbedderConfig]:
    meta = json.loads((Path(directory) / META_FILE).read_text())
    return VectorIndex.load(Path(directory)), EmbedderConfig.from_dict(meta["embedder_config"])


def _load_checked_reranker(path: str, name: str, device: str, max_length: int | None, force: bool) -> CrossEncoder:
    if not force:
        ensure_trained_head(path, name)
    return load_reranker(path, device, max_length)


def index(settings: Settings, row: Index) -> tuple[VectorIndex, EmbedderConfig]:
    """A built index and the embedder settings it was built with."""
    index_dir = str(storage.local_copy(settings, row.path))
    return loaded_cache(settings).get(("index", index_dir), lambda: _load_index(index_dir))


def embedder(settings: Settings, row: Model, max_seq_length: int | None, int8: bool = False) -> SentenceTransformer:
    path = model_path(settings, row)
    device = resolve_device(settings.device)
    return loaded_cache(settings).get(
        ("embedder", path, int8), lambda: maybe_int8(load_embedder(path, device, max_seq_length), int8)
    )


def reranker(settings: Settings, row: Model, force: bool = False, int8: bool = False) -> CrossEncoder:
    """A cross-encoder, refused (UntrainedHeadError) when its head was never trained, unless ``force``."""
    path = model_path(settings, row)
    device = resolve_device(settings.device)
    max_length = row.config.get("max_length")
    return loaded_cache(settings).get(
        ("reranker", path, force, int8),
        lambda: maybe_int8(_load_checked_reranker(path, row.id, device, max_length, force), int8),
    )


def corpus(settings: Settings, dataset: Dataset) -> dict[str, Document]:
    return loaded_cache(settings).get(
        ("corpus", dataset.path), lambda: read_retrieval_set(storage.local_copy(settings, dataset.path)).corpus
    )
