"""The int8 CPU path shared by search and the benchmarks that measure its cost.

Dynamic quantisation: Linear weights are stored in int8 with one scale per output row, and each
layer's input is quantised on the fly (one scale per call). Two choices decide its quality cost:

- Per-channel weight scales: one scale per matrix lets one large row flatten all the others.
- Full-range activations: torch's dynamic Linear quantises inputs to 7 bits by default
  (``reduce_range``) because x86 CPUs without VNNI multiply-add u8 x s8 pairs into 16 bits, which can
  saturate. CPUs with VNNI or AMX int8 accumulate in 32 bits, so there all 8 bits are safe and used.
  Measured in docs/benchmarks.md ("int8 search path").
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

# CPU flags (Linux /proc/cpuinfo names) of instructions that accumulate u8 x s8 products in 32 bits.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def has_int8_dot_product(cpuinfo: str) -> bool:
    """Whether the first CPU in a /proc/cpuinfo text has VNNI or AMX int8."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool(INT8_DOT_PRODUCT_FLAGS & set(flags))


@lru_cache
def cpu_has_int8_dot_product() -> bool:
    """Whether full 8-bit activations are safe here; unknown CPUs (non-Linux, ARM) keep 7 bits."""
    try:
        return has_int8_dot_product(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


@lru_cache
def _full_range_linear_type() -> type:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRangeDynamicLinear(DynamicLinear):
        """torch's dynamic int8 Linear with 8-bit instead of 7-bit activations (needs VNNI or AMX)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = self._packed_params._packed_params
            return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)

    return FullRangeDynamicLinear


def maybe_int8(
    model: Any,
    int8: bool,
    keep_fp32: str | None = None,
    per_channel: bool = True,
    full_range: bool | None = None,
) -> Any:
    """A dynamically int8-quantised copy of ``model``'s Linear layers, or ``model`` itself if not ``int8``.

    ``keep_fp32``: a regular expression on module names whose Linear layers stay in fp32, e.g. a
    reranker's head (measured on a MiniLM reranker: no quality gain, the error is in the body).
    ``per_channel``: one weight scale per output row (default) instead of one per matrix; same speed.
    ``full_range``: 8-bit activations; default: where the CPU has VNNI or AMX int8.
    The model passed in is left as it was.
    """
    if not int8:
        return model
    import torch

    if full_range is None:
        full_range = cpu_has_int8_dot_product()
    qconfig = (
        torch.ao.quantization.per_channel_dynamic_qconfig
        if per_channel
        else torch.ao.quantization.default_dynamic_qconfig
    )
    spec = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not (keep_fp32 and re.search(keep_fp32, name))
    }
    mapping = {torch.nn.Linear: _full_range_linear_type()} if full_range else None
    return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, mapping=mapping)
