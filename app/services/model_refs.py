"""What a client may write as ``model``: a Retune model id, a model's name, or an alias that names a model.

OpenAI, Cohere and TEI clients send one string; users copy whichever they have at hand, so all three
resolve here, in that order (an id never shadows, since an alias name may not be a model id).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequestError, NotFoundError, WrongModelKindError
from app.db.tables import IndexAlias, Model


def resolve_model(session: Session, reference: str, kind: str | None = None) -> Model:
    """The model ``reference`` names; with ``kind``, one of that kind (an embedder is no reranker)."""
    row = session.get(Model, reference) or _by_alias(session, reference) or _by_name(session, reference)
    if row is None:
        raise NotFoundError("model", reference)
    if kind is not None and row.kind != kind:
        raise WrongModelKindError(
            f"model '{reference}' is an {row.kind}, not an {kind}"
            if kind == "embedder"
            else f"model '{reference}' is an {row.kind}, not a {kind}: train a reranker job and use its model"
        )
    return row


def _by_alias(session: Session, name: str) -> Model | None:
    alias = session.get(IndexAlias, name)
    if alias is None:
        return None
    if alias.model_id is None:
        raise InvalidRequestError(f"alias '{name}' points at index '{alias.index_id}', not a model")
    return session.get(Model, alias.model_id)


def _by_name(session: Session, name: str) -> Model | None:
    rows = list(session.scalars(select(Model).where(Model.name == name).limit(2)))
    if len(rows) > 1:
        raise InvalidRequestError(f"several models are named '{name}': give a model id")
    return rows[0] if rows else None


def usable_models(session: Session) -> list[Model]:
    """Embedders and rerankers a client can name (every read key may use every model)."""
    query = select(Model).where(Model.kind.in_(("embedder", "reranker"))).order_by(Model.created_at)
    return list(session.scalars(query))
