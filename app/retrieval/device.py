"""Pick the torch device once: CUDA when present, else CPU."""

from __future__ import annotations


def resolve_device(preferred: str | None = None) -> str:
    if preferred:
        return preferred
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_threads(threads: int | None) -> None:
    """Cap torch's intra-op CPU threads (several worker processes on one machine should share the cores)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
