"""ONNX Runtime: the body exported once with ``torch.onnx.export``, int8 by ORT's dynamic quantisation.

Written against the runtime directly because optimum-onnx (the maintained exporter sentence-transformers'
``backend="onnx"`` needs) requires transformers < 4.58, and Retune runs transformers 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.retrieval.backends.base import body
from app.retrieval.backends.spec import OUTPUT_NAME, Kind

MODEL_FILE = "model.onnx"
OPSET = 17
_TRACE_TEXTS = ["a short text", "a longer text, so that the traced batch is padded"]


def _body_module(hf_model: Any, output_name: str, input_names: list[str]) -> Any:
    import torch

    class Body(torch.nn.Module):
        """Positional inputs in ``input_names`` order, one output tensor: what the exporter traces."""

        def __init__(self) -> None:
            super().__init__()
            self.hf_model = hf_model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.hf_model(**dict(zip(input_names, inputs, strict=True)), return_dict=True)[output_name]

    return Body().eval()


def export_onnx(model: Any, kind: Kind, target: Path) -> Path:
    """``model`` (a freshly loaded sentence-transformers model, fp32, CPU) exported to ``target``/model.onnx,
    with dynamic batch and sequence axes. The export traces the model: do not serve this copy afterwards."""
    import torch

    module = body(model)
    tokens = model.tokenizer(_TRACE_TEXTS, padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokens]
    output = OUTPUT_NAME[kind]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if kind == "embedder" else {0: "batch"}
    target.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            _body_module(module.model.eval(), output, names),
            tuple(tokens[n] for n in names),
            str(target / MODEL_FILE),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic axes as asked
        )
    return target / MODEL_FILE


def quantize_onnx(fp32_dir: Path, target: Path) -> Path:
    """ORT's dynamic int8 quantisation (int8 weights per output channel, activations quantised per call),
    the same scheme as the torch int8 path (app.retrieval.quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(fp32_dir / MODEL_FILE), str(target / MODEL_FILE), weight_type=QuantType.QInt8,
                     per_channel=True)  # fmt: skip
    return target / MODEL_FILE


class OnnxRuntime:
    """An ``InferenceSession`` on the CPU provider, with ``threads`` intra-op threads."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, inputs)[0]
