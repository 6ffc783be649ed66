"""FAISS indexes of a dataset's corpus, built by a worker with a chosen embedder."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceUnavailableError
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
    dataset = get_dataset(session, dataset_id)
    if dataset.format != "beir":
        # Refused at once rather than failing in the worker: a training file has no corpus of its own.
        raise InvalidRequestError(
            f"dataset '{dataset_id}' is a {dataset.format} training file, not a corpus; an index needs a BEIR "
            'dataset: upload a .zip/.tar.gz with corpus.jsonl (one {"_id", "text"} per line)'
        )
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
    except ServiceUnavailableError:
        # As for jobs: the build is in SQL; the sweep sends one never sent once the broker answers.
        log.warning("index %s: the task queue is unreachable; the recovery sweep will send its build", index_id)
        return row
    row.dispatched_at = utcnow()
    session.commit()
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


def delete_index(session: Session, settings: Settings, index_id: str) -> None:
    """409 names the alias that points at it, or says it is building (its worker would write it back)."""
    row = get_index(session, index_id)
    alias = session.scalar(select(IndexAlias.name).where(IndexAlias.index_id == index_id).limit(1))
    if alias is not None:
        raise ConflictError(
            f"index '{index_id}' is the target of alias '{alias}'; point the alias elsewhere or delete it first"
        )
    if row.status == "building":
        raise ConflictError(f"index '{index_id}' is building; delete it once it is ready or failed")
    session.delete(row)
    session.commit()
    storage.store(settings).remove(row.path)


def delete_alias(session: Session, name: str) -> None:
    session.delete(get_alias(session, name))
    session.commit()


def get_alias(session: Session, name: str) -> IndexAlias:
    return get_or_404(session, IndexAlias, name, "alias")


def list_aliases(session: Session) -> list[IndexAlias]:
    return list(session.scalars(select(IndexAlias).order_by(IndexAlias.name)))


def _claim_build(index_id: str, stale_seconds: int) -> bool:
    """Atomically take the build: building, and no live builder (never started, or its heartbeat is
    stale). A second delivery of the same task finds a fresh heartbeat and builds nothing."""
    now = utcnow()
    with session_scope() as s:
        return bool(
            s.execute(
                update(Index)
                .where(
                    Index.id == index_id,
                    Index.status == "building",
                    or_(Index.heartbeat_at.is_(None), Index.heartbeat_at < now - timedelta(seconds=stale_seconds)),
                )
                .values(heartbeat_at=now, attempts=Index.attempts + 1)
            ).rowcount
        )


def build_index(index_id: str, settings: Settings | None = None) -> None:
    """Worker side: claim the build, then build it under a heartbeat (a dead builder is noticed)."""
    from app.services.job_runner import Heartbeat

    settings = settings or get_settings()
    if not _claim_build(index_id, settings.job_stale_seconds):
        log.info("index %s: nothing to build (built, failed, or building elsewhere)", index_id)
        return
    with Heartbeat(index_id, interval=max(1.0, settings.job_stale_seconds / 4), table=Index):
        _build_claimed(index_id, settings)


def load_index_dir(directory: Path) -> tuple[VectorIndex, EmbedderConfig]:
    """A built index's folder: the vectors and the embedder settings they were encoded with."""
    meta = json.loads((directory / META_FILE).read_text())
    return VectorIndex.load(directory), EmbedderConfig.from_dict(meta["embedder_config"])


def _progress(index_id: str, done: int, total: int) -> None:
    """Passages encoded so far, for GET /indexes/{id} (one short transaction a chunk of passages)."""
    with session_scope() as s:
        s.execute(update(Index).where(Index.id == index_id).values(docs_encoded=done, num_docs=total))


def _build_claimed(index_id: str, settings: Settings) -> None:
    """Encode the corpus, write the index to a staging folder, publish it to the store, then mark it ready."""
    with session_scope() as s:
        row = s.get(Index, index_id)
        if row is None or row.status != "building":
            return
        dataset = s.get(Dataset, row.dataset_id)
        model = s.get(Model, row.model_id)
        if dataset is None or model is None:
            row.status, row.error = "failed", "its dataset or model was deleted"
            return
        dataset_key, key = dataset.path, row.path
        path = model_path(settings, model)
        config = EmbedderConfig.from_dict(model.config)
        requested_type = row.index_type
    staging = storage.staging_dir(settings)
    try:
        corpus = read_retrieval_set(storage.local_copy(settings, dataset_key)).corpus
        embedder = load_embedder(path, resolve_device(settings.device), config.max_seq_length)
        doc_ids = list(corpus)
        vectors = encode_passages(
            embedder,
            config,
            [corpus[d] for d in doc_ids],
            on_progress=lambda done, total: _progress(index_id, done, total),
        )
        index = VectorIndex.build(vectors, doc_ids, choose_kind(requested_type, len(doc_ids)))
        index.save(staging)
        (staging / META_FILE).write_text(json.dumps({"model_id": model.id, "embedder_config": config.to_dict()}))
        storage.store(settings).publish_dir(staging, key)
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


def recover_lost_builds(settings: Settings | None = None) -> list[str]:
    """The sweep for index builds: one whose builder died (stale heartbeat) or whose message was lost
    (never claimed, sent long ago) is sent again, until ``RETUNE_INDEX_BUILD_ATTEMPTS`` builds have
    been started; then it is marked failed. No index stays ``building`` forever."""
    settings = settings or get_settings()
    now = utcnow()
    dead = and_(
        Index.heartbeat_at.is_not(None), Index.heartbeat_at < now - timedelta(seconds=settings.job_stale_seconds)
    )
    sent_before = now - timedelta(seconds=settings.redispatch_seconds)
    unclaimed = and_(
        Index.heartbeat_at.is_(None), or_(Index.dispatched_at.is_(None), Index.dispatched_at < sent_before)
    )
    with session_scope() as s:
        lost = list(s.scalars(select(Index).where(Index.status == "building", or_(dead, unclaimed))))
        resend = []
        for row in lost:
            if row.attempts >= settings.index_build_attempts:
                row.status, row.finished_at = "failed", now
                row.error = f"its builder died {row.attempts} times (worker killed or out of memory?)"
            else:
                row.dispatched_at = now
                resend.append(row.id)
    for index_id in resend:
        log.warning("index %s: its build looks lost (dead worker or lost message): sending it again", index_id)
        dispatch.enqueue(BUILD_INDEX, index_id)
    return resend
