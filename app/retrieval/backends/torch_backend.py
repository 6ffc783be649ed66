"""torch backends beside the fp32 reference: dynamic int8 (app.retrieval.quantization) and bf16 autocast."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from app.retrieval.backends.base import body
from app.retrieval.backends.spec import OUTPUT_NAME, BackendUnavailable, Kind

# CPU flags (Linux /proc/cpuinfo names) of bf16 matrix instructions: without them bf16 is emulated (slow).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache
def cpu_has_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(BF16_FLAGS & set(flags))


def with_bf16_autocast(model: Any, kind: Kind) -> Any:
    """``model`` whose body runs under bf16 autocast (weights stay fp32; outputs come back as fp32)."""
    import torch

    device = model.device.type
    if device == "cpu" and not cpu_has_bf16():
        raise BackendUnavailable("bf16 needs a CPU with AVX512-BF16 or AMX, or CUDA")
    module = body(model)
    inner, output = module.model, OUTPUT_NAME[kind]

    class Autocast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.config = inner.config

        @property
        def device(self) -> torch.device:
            return inner.device

        def forward(self, **features: Any) -> dict[str, torch.Tensor]:
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                out = inner(**features)
            return {output: out[output].float()}

    module.model = Autocast()
    return model
