"""Backend names and kinds, importable without torch (the settings validate them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["embedder", "reranker"]
ENGINES = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")
OUTPUT_NAME: dict[str, str] = {"embedder": "last_hidden_state", "reranker": "logits"}


class BackendUnavailable(Exception):
    """This backend cannot serve this model here (no runtime, no CPU support, an unsupported architecture)."""


@dataclass(frozen=True)
class Backend:
    """An engine and a precision, written ``engine-precision`` (``onnx-int8``)."""

    engine: str = "torch"
    precision: str = "fp32"

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"

    @property
    def is_reference(self) -> bool:
        return self == REFERENCE


REFERENCE = Backend()


def parse_backend(label: str) -> Backend:
    engine, _, precision = label.strip().partition("-")
    if engine not in ENGINES or precision not in PRECISIONS or (precision == "bf16" and engine != "torch"):
        known = "torch-fp32|int8|bf16, onnx-fp32|int8, openvino-fp32|int8"
        raise ValueError(f"unknown backend {label!r}: expected one of {known}")
    return Backend(engine, precision)
