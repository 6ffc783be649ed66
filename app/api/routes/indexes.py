from fastapi import APIRouter, status

from app.api.deps import DbSession, ReadAccess, WriteAccess
from app.api.schemas import IndexIn, IndexOut
from app.services import indexes

router = APIRouter(prefix="/indexes", tags=["indexes"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=IndexOut, dependencies=[WriteAccess])
def create_index(body: IndexIn, db: DbSession) -> IndexOut:
    return IndexOut.model_validate(indexes.create_index(db, body.dataset_id, body.model_id))


@router.get("", response_model=list[IndexOut], dependencies=[ReadAccess])
def list_indexes(db: DbSession) -> list[IndexOut]:
    return [IndexOut.model_validate(i) for i in indexes.list_indexes(db)]


@router.get("/{index_id}", response_model=IndexOut, dependencies=[ReadAccess])
def get_index(index_id: str, db: DbSession) -> IndexOut:
    return IndexOut.model_validate(indexes.get_index(db, index_id))
