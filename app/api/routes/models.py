from fastapi import APIRouter

from app.api.deps import DbSession, ReadAccess, SettingsDep
from app.api.schemas import ModelOut
from app.core.config import Settings
from app.db.tables import Model
from app.services import models

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelOut], dependencies=[ReadAccess])
def list_models(db: DbSession, settings: SettingsDep) -> list[ModelOut]:
    return [_model_out(settings, m) for m in models.list_models(db)]


@router.get("/{model_id}", response_model=ModelOut, dependencies=[ReadAccess])
def get_model(model_id: str, db: DbSession, settings: SettingsDep) -> ModelOut:
    return _model_out(settings, models.get_model(db, model_id))


def _model_out(settings: Settings, row: Model) -> ModelOut:
    return ModelOut.model_validate(row).model_copy(update=models.calibration_view(settings, row))
