from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import DbSession, ReadAccess, WriteAccess
from app.api.schemas import AliasIn, AliasOut, IndexIn, IndexOut
from app.services import indexes

router = APIRouter(prefix="/indexes", tags=["indexes"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=IndexOut, dependencies=[WriteAccess])
def create_index(body: IndexIn, db: DbSession) -> IndexOut:
    return IndexOut.model_validate(indexes.create_index(db, body.dataset_id, body.model_id, body.index_type))


@router.get("", response_model=list[IndexOut], dependencies=[ReadAccess])
def list_indexes(db: DbSession) -> list[IndexOut]:
    return [IndexOut.model_validate(i) for i in indexes.list_indexes(db)]


@router.get("/{index_id}", response_model=IndexOut, dependencies=[ReadAccess])
def get_index(index_id: str, db: DbSession) -> IndexOut:
    return IndexOut.model_validate(indexes.get_index(db, index_id))


aliases = APIRouter(prefix="/aliases", tags=["indexes"])


@aliases.put("/{name}", response_model=AliasOut, dependencies=[WriteAccess])
def set_alias(name: Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
              body: AliasIn, db: DbSession) -> AliasOut:  # fmt: skip
    """Point an alias at a ready index (e.g. a rebuild with a fine-tuned embedder), or at a model
    (`model_id`, for the OpenAI/Cohere/TEI routes): an atomic switch."""
    return AliasOut.model_validate(indexes.set_alias(db, name, body.index_id, body.model_id))


@aliases.get("", response_model=list[AliasOut], dependencies=[ReadAccess])
def list_aliases(db: DbSession) -> list[AliasOut]:
    return [AliasOut.model_validate(a) for a in indexes.list_aliases(db)]


@aliases.get("/{name}", response_model=AliasOut, dependencies=[ReadAccess])
def get_alias(name: str, db: DbSession) -> AliasOut:
    return AliasOut.model_validate(indexes.get_alias(db, name))
