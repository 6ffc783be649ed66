"""What both trainers share: the job's outcome, and the Trainer arguments every job sets the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.evaluation.verdict import Verdict
from app.training.params import TrainingParams

if TYPE_CHECKING:
    from app.evaluation.retrieval import CorpusVectors, KnownVectors
    from app.training.callbacks import BestModel
    from app.training.observer import TrainingObserver


@dataclass
class TrainingOutcome:
    model_dir: Path
    config: dict[str, Any]
    better_than_base: bool
    base_value: float | None
    best_value: float | None
    best_step: int | None
    metric: str
    verdict: Verdict | None = None  # base vs chosen model on the test queries, paired

    @classmethod
    def chosen(cls, model_dir: Path, config: dict[str, Any], best: BestModel, verdict: Verdict) -> TrainingOutcome:
        """A training job's outcome: the state ``best`` kept, better than the base when its test verdict says so."""
        return cls(
            model_dir=model_dir,
            config=config,
            better_than_base=verdict.result == "better",
            base_value=best.base_value,
            best_value=best.best_value,
            best_step=best.best_step,
            metric=best.metric,
            verdict=verdict,
        )


def precision_flags(device: str, precision: str = "auto") -> dict[str, bool]:
    """TrainingArguments' mixed-precision flags for ``precision`` on ``device``.

    auto: bf16 where the GPU has it, else fp16 on CUDA; full precision on CPU. bf16: autocast on a CUDA
    GPU with bf16 or a CPU with AMX / AVX512-BF16; elsewhere a ValueError, not a silently emulated (slow)
    bf16. The weights, the optimiser state and the saved model stay fp32 either way.
    """
    if precision == "fp32":
        return {}
    cuda = device.startswith("cuda")
    if precision == "auto":
        if not cuda:
            return {}
        import torch

        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    if precision != "bf16":
        raise ValueError(f"params.precision: unknown precision {precision!r}")
    if cuda:
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ValueError(f"params.precision 'bf16': {device} has no bf16 support; use 'auto' (fp16 AMP) or 'fp32'")
        return {"bf16": True}
    from app.retrieval.backends.torch_backend import cpu_has_bf16

    if device != "cpu" or not cpu_has_bf16():
        raise ValueError(
            f"params.precision 'bf16': this worker's {device} has no bf16 instructions (AMX or AVX512-BF16), "
            "where bf16 would be emulated and slower than fp32; use 'auto' or 'fp32'"
        )
    return {"bf16": True}


def precision_message(device: str, flags: dict[str, bool]) -> str:
    """The job's note of the precision its training steps run in (the saved weights are fp32 either way)."""
    if flags.get("bf16"):
        return f"training precision: bf16 autocast on {device} (weights and the saved model stay fp32)"
    if flags.get("fp16"):
        return f"training precision: fp16 AMP on {device} (weights and the saved model stay fp32)"
    return f"training precision: fp32 on {device}"


@contextmanager
def served_forward(model: Any) -> Iterator[None]:
    """``model`` runs as search serves it, in fp32, inside a mixed-precision run: accelerate wraps the trained
    model's forward in autocast for the whole run, so an evaluation from a callback would otherwise score
    bf16 (or fp16) inference, not the model a job publishes."""
    original = model.__dict__.get("_original_forward")
    if original is None:
        yield
        return
    wrapped = model.__dict__["forward"]
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def unwrap_forward(trainer: Any) -> None:
    """After training: the model's own forward back (accelerate keeps its autocast wrapper otherwise), so the
    final evaluation, the test and calibration see fp32 inference."""
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def trainer_arguments(params: TrainingParams, output_dir: Path, device: str, n_rows: int) -> dict[str, Any]:
    """Keyword arguments for sentence-transformers' TrainingArguments (both model kinds)."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": params.epochs,
        "max_steps": params.max_steps or -1,
        "per_device_train_batch_size": min(params.batch_size, n_rows),  # type: ignore[attr-defined]
        "learning_rate": params.learning_rate,
        "warmup_steps": params.warmup_ratio,  # a float is a ratio in transformers v5
        "weight_decay": params.weight_decay,
        "seed": params.seed,
        "logging_steps": params.logging_steps,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": device == "cpu",
        **precision_flags(device, params.precision),
    }


def checkpoint_arguments(params: TrainingParams) -> dict[str, Any]:
    """The checkpointing both trainers share: the last one only, every ``checkpoint_steps`` (what a resume reads)."""
    return {"save_strategy": "steps", "save_steps": params.checkpoint_steps, "save_total_limit": 1}


def set_attention_dropout(model: Any, probability: float | None) -> int:
    """Set the dropout on attention probabilities of every self-attention module; None keeps the model's own.

    At 0, torch's scaled_dot_product_attention takes its fused CPU kernel, which never materialises the
    (heads x length x length) probabilities nor their dropout mask for backward; with dropout it falls back
    to the math path that keeps both (docs/training.md, Memory). Only the modules are changed, so the saved
    config, and inference, are the model's own. Returns how many modules were changed.
    """
    from torch import nn

    if probability is None:
        return 0
    changed = 0
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if type(module).__name__.endswith("SelfAttention") and isinstance(dropout, nn.Dropout):
            dropout.p = probability
            changed += 1
    return changed


def reused_encoding(
    known_vectors: Callable[[], KnownVectors | None] | None, doc_ids: list[str], observer: TrainingObserver,
    stage: str,
) -> CorpusVectors | None:  # fmt: skip
    """The corpus's vectors when the same model in the same configuration encoded them already (an index of
    it over the same dataset), in ``doc_ids``' order; None when there are none or they lack a passage.
    Encoding the corpus is most of a job's step 0 on a CPU."""
    known = known_vectors() if known_vectors is not None else None
    encoded = known.encoded.restricted_to(doc_ids) if known is not None else None
    if known is not None and encoded is None:
        observer.on_message(f"{stage}: {known.source} lacks some of this job's passages; encoding the corpus")
    elif known is not None and encoded is not None:
        observer.on_message(f"{stage}: reused the vectors of {known.source} ({len(encoded.doc_ids)} passages)")
    return encoded
