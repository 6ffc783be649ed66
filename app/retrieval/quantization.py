"""The int8 CPU path shared by search and the benchmarks that measure its cost."""

from __future__ import annotations

import re
from typing import Any


def maybe_int8(model: Any, int8: bool, keep_fp32: str | None = None, per_channel: bool = False) -> Any:
    """Dynamic int8 quantisation of the Linear layers (weights int8, activations quantised on the fly).

    ``keep_fp32``: a regular expression on module names whose Linear layers stay in fp32, e.g. a
    reranker's head (measured on a MiniLM reranker: no quality gain, the error is in the body).
    ``per_channel``: one weight scale per output row instead of one per matrix (finer, same speed).
    Returns a quantised copy; the model passed in is left as it was.
    """
    if not int8:
        return model
    import torch

    linear_layers = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not (keep_fp32 and re.search(keep_fp32, name))
    }
    qconfig = (
        torch.ao.quantization.per_channel_dynamic_qconfig
        if per_channel
        else torch.ao.quantization.default_dynamic_qconfig
    )
    spec = {name: qconfig for name in linear_layers}
    return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
