"""An upload keeps an OpenVINO export's weights (``model.bin``, not a pickle) and drops pickled ones."""

from __future__ import annotations

from pathlib import Path

from app.services.model_upload import drop_pickled_weights


def _folder(root: Path) -> Path:
    (root / "runtime" / "openvino-int8").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "pytorch_model.bin").write_bytes(b"pickle")
    (root / "runtime" / "openvino-int8" / "model.xml").write_text("<net/>")
    (root / "runtime" / "openvino-int8" / "model.bin").write_bytes(b"raw tensors")
    return root


def test_openvino_ir_weights_survive_and_pickles_go(tmp_path: Path) -> None:
    root = _folder(tmp_path / "model")
    drop_pickled_weights(root, "m.zip")
    assert not (root / "pytorch_model.bin").exists()
    assert (root / "runtime" / "openvino-int8" / "model.bin").read_bytes() == b"raw tensors"


def test_a_bin_without_its_ir_or_outside_runtime_is_dropped(tmp_path: Path) -> None:
    root = _folder(tmp_path / "model")
    (root / "runtime" / "openvino-int8" / "model.xml").unlink()
    (root / "runtime" / "onnx-int8").mkdir()
    (root / "runtime" / "onnx-int8" / "model.bin").write_bytes(b"pickle")
    (root / "runtime" / "onnx-int8" / "model.xml").write_text("<net/>")
    drop_pickled_weights(root, "m.zip")
    assert not (root / "runtime" / "openvino-int8" / "model.bin").exists()
    assert not (root / "runtime" / "onnx-int8" / "model.bin").exists()
