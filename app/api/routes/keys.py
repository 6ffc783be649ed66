from datetime import datetime

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AdminAccess, DbSession
from app.services import api_keys

router = APIRouter(prefix="/keys", tags=["keys"], dependencies=[AdminAccess])


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    scope: str = Field(pattern="^(read|write|admin)$")


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="Shown once; only its hash is stored.")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=NewKeyOut)
def create_key(body: KeyIn, db: DbSession) -> NewKeyOut:
    row, key = api_keys.create_key(db, body.name, body.scope)
    return NewKeyOut(**KeyOut.model_validate(row).model_dump(), key=key)


@router.get("", response_model=list[KeyOut])
def list_keys(db: DbSession) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in api_keys.list_keys(db)]


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, db: DbSession) -> KeyOut:
    return KeyOut.model_validate(api_keys.revoke_key(db, key_id))
