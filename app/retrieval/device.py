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


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS after a task.

    A training or encoding task frees gigabytes of activations, but glibc keeps freed blocks in the
    malloc arena of the thread that used them, so an idle worker would stay at its peak size
    (measured: 8 GB after one default reranker job). ``malloc_trim`` returns them; on a GPU,
    torch's cached blocks go back too. A no-op where there is no glibc.
    """
    import contextlib
    import ctypes
    import ctypes.util
    import sys

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
