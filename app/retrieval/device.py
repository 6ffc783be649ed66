"""Pick the torch device once: CUDA when present, else CPU."""

from __future__ import annotations


def resolve_device(preferred: str | None = None) -> str:
    if preferred:
        return preferred
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
