from fastapi import APIRouter, Request, Response

from app.api.deps import DbSession, ReadAccess
from app.api.pagination import PageQuery, paginate
from app.api.schemas import ModelOut
from app.services import listing, models

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelOut], dependencies=[ReadAccess])
def list_models(db: DbSession, request: Request, response: Response, page: PageQuery) -> list[ModelOut]:
    """Oldest first. Pagination: `X-Has-More` and `Link: <...>; rel="next"` headers."""
    found = listing.page_models(db, page.after, page.limit)
    return [ModelOut.model_validate(m) for m in paginate(request, response, found)]


@router.get("/{model_id}", response_model=ModelOut, dependencies=[ReadAccess])
def get_model(model_id: str, db: DbSession) -> ModelOut:
    return ModelOut.model_validate(models.get_model(db, model_id))
