"""One page of each list endpoint (keyset pagination, see ``app.services.pagination``), with its filters."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Dataset, Index, IndexAlias, Job, Model
from app.services.pagination import Page, keyset_page


def page_jobs(
    session: Session,
    after: str | None,
    limit: int,
    status: str | None = None,
    kind: str | None = None,
    dataset_id: str | None = None,
) -> Page[Job]:
    stmt = select(Job)
    if status == "cancelling":  # shown for a running job whose cancel the worker has not confirmed yet
        stmt = stmt.where(Job.status == "running", Job.cancel_requested.is_(True))
    elif status == "running":
        stmt = stmt.where(Job.status == "running", Job.cancel_requested.is_(False))
    elif status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == dataset_id)
    return keyset_page(session, stmt, Job, [Job.created_at, Job.id], after, limit)


def page_datasets(session: Session, after: str | None, limit: int) -> Page[Dataset]:
    return keyset_page(session, select(Dataset), Dataset, [Dataset.created_at, Dataset.id], after, limit)


def page_models(session: Session, after: str | None, limit: int) -> Page[Model]:
    """Oldest first, as before: the bundled model leads the list."""
    order = [Model.created_at, Model.id]
    return keyset_page(session, select(Model), Model, order, after, limit, newest_first=False)


def page_indexes(session: Session, after: str | None, limit: int) -> Page[Index]:
    return keyset_page(session, select(Index), Index, [Index.created_at, Index.id], after, limit)


def page_aliases(session: Session, after: str | None, limit: int) -> Page[IndexAlias]:
    """By name, as before."""
    return keyset_page(session, select(IndexAlias), IndexAlias, [IndexAlias.name], after, limit, newest_first=False)
