"""FAISS indexes of a dataset's corpus, built by a worker with a chosen embedder."""

from __future__ import annotations

import json
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.errors import ConflictError, InvalidRequestError, NotFoundError
from app.core.queue import BUILD_INDEX
from app.db.session import session_scope
from app.db.tables import Dataset, Index, IndexAlias, Model, new_id, utcnow
from app.ingest import read_retrieval_set
from app.retrieval.device import resolve_device
from app.retrieval.embedder import EmbedderConfig, encode_passages, load_embedder
from app.retrieval.vector_index import VectorIndex, choose_kind
from app.services import dispatch, storage
from app.services.datasets import get_dataset
from app.services.lookup import get_or_404
from app.services.models import get_model, model_path

log = logging.getLogger(__name__)
META_FILE = "meta.json"


def create_index(session: Session, dataset_id: str, model_id: str, index_type: str = "auto") -> Index:
    get_dataset(session, dataset_id)
    model = get_model(session, model_id)
    if model.kind != "embedder":
        raise InvalidRequestError(f"model '{model_id}' is a {model.kind}; an index needs an embedder")
    index_id = new_id()
    row = Index(
        id=index_id, dataset_id=dataset_id, model_id=model_id, path=storage.index_rel(index_id), index_type=index_type
    )
    session.add(row)
    session.commit()
    try:
        dispatch.enqueue(BUILD_INDEX, index_id)
    except Exception:
        row.status, row.error = "failed", "could not be queued: the broker is unreachable"
        session.commit()
        raise
    return row


def list_indexes(session: Session) -> list[Index]:
    return list(session.scalars(select(Index).order_by(Index.created_at.desc())))


def get_index(session: Session, index_id: str) -> Index:
    return get_or_404(session, Index, index_id, "index")


def resolve_index(session: Session, reference: str) -> Index:
    """An index id, or an alias name: resolved once per request, so a request sees one version."""
    row = session.get(Index, reference)
    if row is None and (alias := session.get(IndexAlias, reference)) is not None:
        if alias.index_id is None:
            raise InvalidRequestError(
                f"alias '{reference}' points at model '{alias.model_id}', not an index: "
                "search needs an index (or use the model with /v1/embeddings, /v2/rerank or /tei)"
            )
        row = session.get(Index, alias.index_id)
    if row is None:
        raise NotFoundError("index", reference)
    return row


def set_alias(session: Session, name: str, index_id: str | None, model_id: str | None = None) -> IndexAlias:
    """Point ``name`` at a ready index or at a model. One row write: readers see the old or the new target."""
    if index_id is not None:
        target = get_index(session, index_id)
        if target.status != "ready":
            raise ConflictError(f"index '{index_id}' is {target.status}; an alias can only point at a ready index")
    else:
        get_model(session, model_id or "")
    if session.get(Index, name) is not None:
        raise InvalidRequestError(f"'{name}' is an index id; choose another alias name")
    if session.get(Model, name) is not None:
        raise InvalidRequestError(f"'{name}' is a model id; choose another alias name")
    alias = session.get(IndexAlias, name)
    if alias is None:
        alias = IndexAlias(name=name, index_id=index_id, model_id=model_id)
        session.add(alias)
    else:
        alias.index_id, alias.model_id, alias.updated_at = index_id, model_id, utcnow()
    session.commit()
    return alias


def get_alias(session: Session, name: str) -> IndexAlias:
    return get_or_404(session, IndexAlias, name, "alias")


def list_aliases(session: Session) -> list[IndexAlias]:
    return list(session.scalars(select(IndexAlias).order_by(IndexAlias.name)))


def build_index(index_id: str, settings: Settings | None = None) -> None:
    """Worker side: encode the corpus, write the index to a staging folder, publish by rename."""
    settings = settings or get_settings()
    with session_scope() as s:
        row = s.get(Index, index_id)
        if row is None or row.status != "building":
            return
        dataset = s.get(Dataset, row.dataset_id)
        model = s.get(Model, row.model_id)
        if dataset is None or model is None:
            row.status, row.error = "failed", "its dataset or model was deleted"
            return
        dataset_dir = storage.absolute(settings, dataset.path)
        path = model_path(settings, model)
        config = EmbedderConfig.from_dict(model.config)
        target = storage.absolute(settings, row.path)
        requested_type = row.index_type
    staging = storage.staging_dir(settings)
    try:
        corpus = read_retrieval_set(dataset_dir).corpus
        embedder = load_embedder(path, resolve_device(settings.device), config.max_seq_length)
        doc_ids = list(corpus)
        vectors = encode_passages(embedder, config, [corpus[d] for d in doc_ids])
        index = VectorIndex.build(vectors, doc_ids, choose_kind(requested_type, len(doc_ids)))
        index.save(staging)
        (staging / META_FILE).write_text(json.dumps({"model_id": model.id, "embedder_config": config.to_dict()}))
        staging.rename(target)
        with session_scope() as s:
            row = s.get(Index, index_id)
            row.status, row.num_docs, row.dim, row.finished_at = "ready", len(index), index.dim, utcnow()
            row.index_type, row.memory_bytes = index.kind, index.memory_bytes()
    except Exception as exc:
        log.exception("index %s failed", index_id)
        storage.remove(staging)
        with session_scope() as s:
            row = s.get(Index, index_id)
            row.status, row.error, row.finished_at = "failed", f"{type(exc).__name__}: {exc}", utcnow()
