"""OpenVINO: the ONNX export converted once by OpenVINO's own converter (``openvino.convert_model``) to its IR.

int8 reads the ONNX int8 export (its dynamic-quantisation nodes): OpenVINO's own weight compression
needs NNCF, a further package, and optimum-intel's route needs transformers < 5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.retrieval.backends.onnx_backend import MODEL_FILE

IR_FILE = "model.xml"  # beside it, model.bin holds the weights


def convert_onnx(onnx_dir: Path, target: Path) -> Path:
    import openvino as ov

    target.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_dir / MODEL_FILE)), str(target / IR_FILE), compress_to_fp16=False)
    return target / IR_FILE


class OpenVinoRuntime:
    """The IR compiled for the CPU in f32 (no silent bf16 on AMX CPUs), with ``threads`` inference threads."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import openvino as ov

        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(folder / IR_FILE), "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.compiled(inputs)[0])
