"""No corpus encoded twice: a job whose model already has an index over the job's dataset reads the
index's vectors instead of encoding the corpus again (on a CPU that encoding is most of a reranker job's
step 0). Only an index built by the same model with the same embedder settings counts, so the vectors
are the ones the job would compute itself."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from app.core.config import Settings
from app.db.session import session_scope
from app.db.tables import Index
from app.evaluation.retrieval import CorpusVectors, KnownVectors
from app.retrieval.embedder import EmbedderConfig
from app.services import storage
from app.services.indexes import load_index_dir

log = logging.getLogger(__name__)


def index_vectors(
    settings: Settings, dataset_id: str, model_id: str | None, config: EmbedderConfig
) -> Callable[[], KnownVectors | None]:
    """A loader (called only by a first attempt) of the newest ready index of ``model_id`` over
    ``dataset_id`` whose embedder settings equal ``config``; None when there is none."""

    def load() -> KnownVectors | None:
        if model_id is None:
            return None
        with session_scope() as s:
            rows = s.scalars(
                select(Index)
                .where(Index.dataset_id == dataset_id, Index.model_id == model_id, Index.status == "ready")
                .order_by(Index.created_at.desc())
            ).all()
            candidates = [(row.id, row.path) for row in rows]
        for index_id, key in candidates:
            try:
                index, built_with = load_index_dir(storage.local_copy(settings, key))
            except (OSError, KeyError, ValueError):  # deleted meanwhile, or an older layout
                log.warning("index %s could not be read for its vectors", index_id, exc_info=True)
                continue
            if built_with.to_dict() == config.to_dict():
                return KnownVectors(CorpusVectors(index.vectors(), index.doc_ids), f"index {index_id}")
        return None

    return load
