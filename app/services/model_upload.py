"""Registering an uploaded sentence-transformers / cross-encoder folder as a model (POST /models).

The archive is extracted by app/ingest/archive.py (traversal, links and size checks) into a staging
folder, checked there, and only then moved into place and given a row: a refused upload leaves nothing.
Loading a model must not run code an uploader chose, so weights are safetensors only (a pickled
``.bin`` / ``.pt`` runs code when unpickled) and nothing that makes transformers or sentence-transformers
import code from the folder is accepted (``auto_map``, ``.py`` files, modules outside sentence-transformers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ModelUploadError
from app.db.tables import Model, new_id
from app.ingest import ParseLimits, extract_archive
from app.retrieval.backends.loading import RUNTIME_DIR
from app.retrieval.backends.openvino_backend import IR_FILE
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.retrieval.reranker import ensure_trained_head
from app.services import storage
from app.services.datasets import ARCHIVE_SUFFIXES, _copy_bounded

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
KINDS = ("embedder", "reranker")
OPENVINO_WEIGHTS = "model.bin"  # beside an IR's model.xml (app.retrieval.backends.openvino_backend)


def find_model_root(extracted: Path, label: str) -> Path:
    """The shallowest folder holding a config.json (archives often wrap the model in one folder)."""
    configs = sorted(extracted.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    if not configs:
        raise ModelUploadError(f"{label}: no config.json found; send an archive of a sentence-transformers folder")
    return configs[0].parent


def _json(path: Path, label: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUploadError(f"{label}: {path.name} is not valid JSON ({exc})") from None


def check_no_remote_code(root: Path, label: str) -> None:
    if code := sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")):
        raise ModelUploadError(f"{label}: Python files are not accepted (remote code): {', '.join(code[:5])}")
    for path in sorted(root.rglob("*.json")):
        data = _json(path, label)
        if isinstance(data, dict) and ("auto_map" in data or data.get("trust_remote_code")):
            raise ModelUploadError(
                f"{label}: {path.relative_to(root).as_posix()} asks for remote code (auto_map); not accepted"
            )
    modules = root / "modules.json"
    for module in _json(modules, label) if modules.is_file() else []:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        if not kind.startswith("sentence_transformers."):
            raise ModelUploadError(f"{label}: modules.json names a module outside sentence-transformers: '{kind}'")


def is_openvino_weights(root: Path, path: Path) -> bool:
    """An OpenVINO export's ``runtime/openvino-*/model.bin`` beside its ``model.xml``: raw tensors that only
    OpenVINO reads, never unpickled. Dropping it (a downloaded model uploaded again) left a model whose
    chosen backend failed every search with a 500."""
    parts = path.relative_to(root).parts
    return (
        len(parts) == 3 and parts[0] == RUNTIME_DIR and parts[1].startswith("openvino-")
        and path.name == OPENVINO_WEIGHTS and path.with_name(IR_FILE).is_file()
    )  # fmt: skip


def drop_pickled_weights(root: Path, label: str) -> None:
    """Safetensors weights are required; pickled copies beside them are removed, never stored."""
    if not any(root.rglob("*.safetensors")):
        pickled = sorted(p.name for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        found = f" (found only {', '.join(pickled[:5])})" if pickled else ""
        raise ModelUploadError(f"{label}: weights must be in safetensors format{found}; pickled weights can run code")
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES and not is_openvino_weights(root, path):
            path.unlink()


def detect_kind(root: Path, label: str) -> str:
    st_config = root / "config_sentence_transformers.json"
    if st_config.is_file() and _json(st_config, label).get("model_type") == "CrossEncoder":
        return "reranker"
    architectures = _json(root / "config.json", label).get("architectures") or []
    return "reranker" if any(str(a).endswith("ForSequenceClassification") for a in architectures) else "embedder"


def embedder_config(root: Path, label: str) -> dict[str, Any]:
    """How search uses it: normalised unless the folder says dot product; its own max_seq_length."""
    st_config = root / "config_sentence_transformers.json"
    similarity = _json(st_config, label).get("similarity_fn_name") if st_config.is_file() else None
    bert_config = root / "sentence_bert_config.json"
    max_len = _json(bert_config, label).get("max_seq_length") if bert_config.is_file() else None
    return EmbedderConfig(normalize=similarity != "dot", max_seq_length=max_len).to_dict()


def check_loads(root: Path, kind: str, label: str, model_name: str) -> dict[str, Any]:
    """Load it as what it will be used as; a reranker must have a trained head (the untrained-head guard)."""
    if kind == "reranker":
        try:
            ensure_trained_head(str(root), model_name)
        except OSError as exc:
            raise ModelUploadError(f"{label}: transformers could not load it as a reranker ({exc})") from None
        return {}
    try:
        load_embedder(str(root), "cpu")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUploadError(f"{label}: sentence-transformers could not load it ({exc})") from None
    return embedder_config(root, label)


def register_upload(
    session: Session, settings: Settings, source: BinaryIO, filename: str, name: str | None, kind: str | None
) -> Model:
    label = Path(filename or "upload").name
    if not label.lower().endswith(ARCHIVE_SUFFIXES):
        raise ModelUploadError(f"{label}: send a .tar.gz or .zip of a sentence-transformers / cross-encoder folder")
    limits = ParseLimits(max_bytes=settings.max_model_upload_bytes)
    staging = storage.staging_dir(settings)
    model_name = (name or label.removesuffix(".zip").removesuffix(".tgz").removesuffix(".tar.gz"))[:200]
    try:
        upload = staging / "upload.archive"
        _copy_bounded(source, upload, label, settings.max_model_upload_bytes)
        extract_archive(upload, label, staging / "extracted", limits)
        root = find_model_root(staging / "extracted", label)
        check_no_remote_code(root, label)
        drop_pickled_weights(root, label)
        detected = detect_kind(root, label)
        if kind == "embedder" and detected == "reranker":
            raise ModelUploadError(f"{label}: kind 'embedder' was given, but the folder holds a cross-encoder")
        chosen = kind or detected
        config = check_loads(root, chosen, label, model_name)
        model_id = new_id()
        storage.store(settings).publish_dir(root, storage.model_rel(model_id))
    finally:
        storage.remove(staging)
    row = Model(
        id=model_id,
        name=model_name,
        kind=chosen,
        source="upload",
        path=storage.model_rel(model_id),
        config=config,
        file_name=label[:255],
    )
    storage.publish(session, settings, row, row.path)
    return row
