from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from app.api.deps import DbSession, ReadAccess, SettingsDep, WriteAccess
from app.api.pagination import PageQuery, paginate
from app.api.schemas import AliasIn, AliasOut, IndexIn, IndexOut
from app.services import indexes, listing

router = APIRouter(prefix="/indexes", tags=["indexes"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=IndexOut, dependencies=[WriteAccess])
def create_index(body: IndexIn, db: DbSession) -> IndexOut:
    return IndexOut.model_validate(indexes.create_index(db, body.dataset_id, body.model_id, body.index_type))


@router.get("", response_model=list[IndexOut], dependencies=[ReadAccess])
def list_indexes(db: DbSession, request: Request, response: Response, page: PageQuery) -> list[IndexOut]:
    """Newest first. Pagination: `X-Has-More` and `Link: <...>; rel="next"` headers."""
    found = listing.page_indexes(db, page.after, page.limit)
    return [IndexOut.model_validate(i) for i in paginate(request, response, found)]


@router.get("/{index_id}", response_model=IndexOut, dependencies=[ReadAccess])
def get_index(index_id: str, db: DbSession) -> IndexOut:
    return IndexOut.model_validate(indexes.get_index(db, index_id))


@router.delete("/{index_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteAccess])
def delete_index(index_id: str, db: DbSession, settings: SettingsDep) -> None:
    """409 while an alias points at it (the answer names the alias) or while it is building; its files go."""
    indexes.delete_index(db, settings, index_id)


aliases = APIRouter(prefix="/aliases", tags=["indexes"])


@aliases.put("/{name}", response_model=AliasOut, dependencies=[WriteAccess])
def set_alias(name: Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
              body: AliasIn, db: DbSession) -> AliasOut:  # fmt: skip
    """Point an alias at a ready index (e.g. a rebuild with a fine-tuned embedder), or at a model
    (`model_id`, for the OpenAI/Cohere/TEI routes): an atomic switch."""
    return AliasOut.model_validate(indexes.set_alias(db, name, body.index_id, body.model_id))


@aliases.get("", response_model=list[AliasOut], dependencies=[ReadAccess])
def list_aliases(db: DbSession, request: Request, response: Response, page: PageQuery) -> list[AliasOut]:
    """By name. Pagination (`after` is a name): `X-Has-More` and `Link: <...>; rel="next"` headers."""
    found = listing.page_aliases(db, page.after, page.limit)
    return [AliasOut.model_validate(a) for a in paginate(request, response, found, key="name")]


@aliases.get("/{name}", response_model=AliasOut, dependencies=[ReadAccess])
def get_alias(name: str, db: DbSession) -> AliasOut:
    return AliasOut.model_validate(indexes.get_alias(db, name))


@aliases.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteAccess])
def delete_alias(name: str, db: DbSession) -> None:
    """The name goes; the index it pointed at stays."""
    indexes.delete_alias(db, name)
