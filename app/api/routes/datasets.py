from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status

from app.api.deps import DbSession, ReadAccess, SettingsDep, WriteAccess
from app.api.pagination import PageQuery, paginate
from app.api.schemas import DatasetOut
from app.services import datasets, listing

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut, dependencies=[WriteAccess])
def upload_dataset(
    db: DbSession,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=".jsonl training file, or .zip/.tar.gz of a BEIR folder")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetOut:
    row = datasets.create_dataset(db, settings, file.file, file.filename or "", name)
    return DatasetOut.model_validate(row)


@router.get("", response_model=list[DatasetOut], dependencies=[ReadAccess])
def list_datasets(db: DbSession, request: Request, response: Response, page: PageQuery) -> list[DatasetOut]:
    """Newest first. Pagination: `X-Has-More` and `Link: <...>; rel="next"` headers."""
    found = listing.page_datasets(db, page.after, page.limit)
    return [DatasetOut.model_validate(r) for r in paginate(request, response, found)]


@router.get("/{dataset_id}", response_model=DatasetOut, dependencies=[ReadAccess])
def get_dataset(dataset_id: str, db: DbSession) -> DatasetOut:
    return DatasetOut.model_validate(datasets.get_dataset(db, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteAccess])
def delete_dataset(dataset_id: str, db: DbSession, settings: SettingsDep) -> None:
    datasets.delete_dataset(db, settings, dataset_id)
