"""The seam: a runtime maps token batches to the body's output (token embeddings or logits).

sentence-transformers calls its ``Transformer`` module's ``model`` with the tokenizer's tensors and reads
one named output (``last_hidden_state`` for an embedder, ``logits`` for a cross-encoder). A
:class:`RuntimeModule` stands in for that model: it hands the tensors to a :class:`Runtime` and returns
its array under the same name. This is how sentence-transformers' own ``backend="onnx"`` plugs optimum's
ORT models in; optimum cannot be installed beside transformers 5 (see docs/search.md), so Retune does it
with the runtimes directly.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from app.retrieval.backends.spec import OUTPUT_NAME, BackendUnavailable, Kind


class Runtime(Protocol):
    """Token batches (the tokenizer's arrays) -> the body's output: (batch, seq, dim) or (batch, labels)."""

    input_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class RuntimeModule(torch.nn.Module):
    """A transformers model's stand-in inside sentence-transformers, computing through ``runtime``."""

    def __init__(self, runtime: Runtime, output_name: str, config: Any) -> None:
        super().__init__()
        self.runtime = runtime
        self.output_name = output_name
        self.config = config  # sentence-transformers reads the model's config (hidden size, outputs)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # where the model "is": the CPU

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        arrays = {name: features[name].detach().cpu().numpy().astype(np.int64) for name in self.runtime.input_names}
        return {self.output_name: torch.from_numpy(np.ascontiguousarray(self.runtime.run(arrays), np.float32))}


def body(model: Any) -> Any:
    """The transformers-backed module of a plain sentence-transformers model (Router models have several)."""
    from sentence_transformers.base.modules.transformer import Transformer

    first = model[0]
    if not isinstance(first, Transformer) or sum(isinstance(m, Transformer) for m in model.modules()) != 1:
        raise BackendUnavailable("only a model with one transformer body can be exported (not a Router model)")
    return first


def attach(model: Any, runtime: Runtime, kind: Kind) -> Any:
    """``model`` computing its body through ``runtime`` (in place; the torch weights are dropped)."""
    module = body(model)
    module.model = RuntimeModule(runtime, OUTPUT_NAME[kind], module.model.config)
    return model
