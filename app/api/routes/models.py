from fastapi import APIRouter

from app.api.deps import DbSession, ReadAccess
from app.api.schemas import ModelOut
from app.services import models

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelOut], dependencies=[ReadAccess])
def list_models(db: DbSession) -> list[ModelOut]:
    return [ModelOut.model_validate(m) for m in models.list_models(db)]


@router.get("/{model_id}", response_model=ModelOut, dependencies=[ReadAccess])
def get_model(model_id: str, db: DbSession) -> ModelOut:
    return ModelOut.model_validate(models.get_model(db, model_id))
