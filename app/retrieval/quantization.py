"""The int8 CPU path shared by search and the benchmarks that measure its cost."""

from __future__ import annotations

from typing import Any


def maybe_int8(model: Any, int8: bool) -> Any:
    """Dynamic int8 quantisation of the Linear layers (weights int8, activations quantised on the fly).

    Returns a quantised copy; the model passed in is left as it was.
    """
    if not int8:
        return model
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
