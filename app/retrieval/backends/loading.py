"""Exports built once into the model folder (``runtime/LABEL/``), and a loaded model put on a backend."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.retrieval.backends.base import attach
from app.retrieval.backends.spec import Backend, BackendUnavailable, Kind

RUNTIME_DIR = "runtime"
FP32_ONNX = Backend("onnx", "fp32")
INT8_ONNX = Backend("onnx", "int8")


def export_dir(model_dir: Path, backend: Backend) -> Path:
    return Path(model_dir) / RUNTIME_DIR / backend.label


def build_export(model_dir: Path, backend: Backend, kind: Kind, load_fresh: Callable[[], Any]) -> Path | None:
    """The export ``backend`` runs (None for torch's), built once: an existing one is reused.

    ``load_fresh``: a new fp32 CPU copy of the model (exporting traces it, so it is not the served one).
    Built in a scratch folder and renamed into place, so a crash never leaves half an export.
    """
    if backend.engine == "torch":
        return None
    target = export_dir(model_dir, backend)
    if target.is_dir():
        return target
    from app.retrieval.backends import onnx_backend, openvino_backend

    scratch = target.with_name(f".{target.name}-{uuid.uuid4().hex}")
    try:
        if backend == FP32_ONNX:
            onnx_backend.export_onnx(load_fresh(), kind, scratch)
        elif backend == INT8_ONNX:
            onnx_backend.quantize_onnx(build_export(model_dir, FP32_ONNX, kind, load_fresh), scratch)
        else:  # OpenVINO converts the ONNX export of the same precision
            onnx = Backend("onnx", backend.precision)
            openvino_backend.convert_onnx(build_export(model_dir, onnx, kind, load_fresh), scratch)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def drop_exports(model_dir: Path, keep: Backend | None) -> None:
    """Every export but ``keep``'s (the gate's unused candidates would only make the model bigger)."""
    root = Path(model_dir) / RUNTIME_DIR
    for folder in root.glob("*") if root.is_dir() else []:
        if keep is None or folder.name != keep.label:
            shutil.rmtree(folder, ignore_errors=True)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def apply_backend(model: Any, model_dir: Path, backend: Backend, kind: Kind, threads: int | None = None) -> Any:
    """``model`` (loaded by torch, fp32) computing through ``backend``; raises BackendUnavailable when it cannot.

    ONNX Runtime and OpenVINO run on the CPU here; on a GPU the torch backends serve.
    """
    if backend.engine == "torch":
        return _torch_backend(model, backend, kind)
    if model.device.type != "cpu":
        raise BackendUnavailable(f"{backend.label} runs on the CPU; this model is on {model.device.type}")
    folder = export_dir(model_dir, backend)
    if not folder.is_dir():
        raise BackendUnavailable(f"no {backend.label} export in the model folder")
    if backend.engine == "onnx":
        from app.retrieval.backends.onnx_backend import OnnxRuntime

        return attach(model, OnnxRuntime(folder, threads), kind)
    from app.retrieval.backends.openvino_backend import OpenVinoRuntime

    return attach(model, OpenVinoRuntime(folder, threads), kind)


def _torch_backend(model: Any, backend: Backend, kind: Kind) -> Any:
    if backend.precision == "int8":
        from app.retrieval.quantization import maybe_int8

        if model.device.type != "cpu":
            raise BackendUnavailable("torch int8 (dynamic quantisation) is a CPU path")
        return maybe_int8(model, True)
    if backend.precision == "bf16":
        from app.retrieval.backends.torch_backend import with_bf16_autocast

        return with_bf16_autocast(model, kind)
    return model
