from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse

from app.api.deps import DbSession, ReadAccess, SettingsDep, WriteAccess
from app.api.pagination import PageQuery, paginate
from app.api.schemas import ModelOut
from app.core.config import Settings
from app.db.tables import Model
from app.services import listing, model_upload, models

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelOut], dependencies=[ReadAccess])
def list_models(
    db: DbSession, settings: SettingsDep, request: Request, response: Response, page: PageQuery
) -> list[ModelOut]:
    """Oldest first. Pagination: `X-Has-More` and `Link: <...>; rel="next"` headers."""
    found = listing.page_models(db, page.after, page.limit)
    return [_model_out(settings, m) for m in paginate(request, response, found)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelOut, dependencies=[WriteAccess])
def upload_model(
    db: DbSession,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=".tar.gz or .zip of a sentence-transformers / cross-encoder folder")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    kind: Annotated[Literal["embedder", "reranker"] | None, Form(description="Checked against the folder.")] = None,
) -> ModelOut:
    row = model_upload.register_upload(db, settings, file.file, file.filename or "", name, kind)
    return _model_out(settings, row)


@router.get("/{model_id}", response_model=ModelOut, dependencies=[ReadAccess])
def get_model(model_id: str, db: DbSession, settings: SettingsDep) -> ModelOut:
    return _model_out(settings, models.get_model(db, model_id))


def _model_out(settings: Settings, row: Model) -> ModelOut:
    views = models.calibration_view(settings, row) | models.serving_backend_view(settings, row)
    return ModelOut.model_validate(row).model_copy(update=views)


@router.get(
    "/{model_id}/download",
    dependencies=[ReadAccess],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}, "application/zip": {}}}},
)
def download_model(
    model_id: str,
    db: DbSession,
    settings: SettingsDep,
    archive_format: Annotated[Literal["tar.gz", "zip"], Query(alias="format")] = "tar.gz",
) -> StreamingResponse:
    """The model folder in sentence-transformers format with a generated model card (README.md), streamed."""
    chunks, filename = models.stream_download(db, settings, model_id, archive_format)
    return StreamingResponse(
        chunks,
        media_type=models.ARCHIVE_FORMATS[archive_format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/{model_id}/card",
    dependencies=[ReadAccess],
    response_class=Response,  # no default media type: the error answers stay documented as JSON
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
)
def model_card(model_id: str, db: DbSession, settings: SettingsDep) -> Response:
    """The generated model card (the README.md of a download), as Markdown."""
    return Response(models.model_card(db, settings, model_id), media_type="text/markdown")


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteAccess])
def delete_model(model_id: str, db: DbSession, settings: SettingsDep) -> None:
    models.delete_model(db, settings, model_id)
