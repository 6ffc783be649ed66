"""What both trainers share: the job's outcome, and the Trainer arguments every job sets the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.evaluation.verdict import Verdict
from app.training.params import TrainingParams


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


def precision_flags(device: str) -> dict[str, bool]:
    """bf16 where the GPU has it, else fp16 on CUDA; full precision on CPU."""
    if not device.startswith("cuda"):
        return {}
    import torch

    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


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
        **precision_flags(device),
    }
