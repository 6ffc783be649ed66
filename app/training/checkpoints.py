"""What a training run needs to resume exactly where a killed worker left it.

transformers' Trainer checkpoints hold the model, optimizer, LR scheduler, step and RNG states;
this file adds Retune's own part: the base model's step-0 metrics, the best evaluated state, and
the exact training rows (mined negatives included), so a resumed run neither re-evaluates the base
nor trains on different data, and its learning-rate schedule continues instead of restarting.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "retune_state.json"
ROWS_FILE = "train_rows.json"
FIRST_STAGE_FILE = "first_stage_run.json"


def trainer_dir(work_dir: Path) -> Path:
    return work_dir / "trainer"


def is_complete(checkpoint: Path) -> bool:
    """transformers writes ``trainer_state.json`` last (after the model, optimizer, scheduler and RNG
    states) and deletes older checkpoints only after it: a checkpoint without a readable one was cut
    by a worker killed while writing it."""
    from transformers.trainer import TRAINER_STATE_NAME

    try:
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == checkpoint_step(str(checkpoint))


def last_checkpoint(work_dir: Path) -> str | None:
    """The newest complete checkpoint. Newer partial ones are removed, so the run resumes from the previous
    one and, saving at the same steps, writes them again whole (transformers' own lookup takes the newest
    folder, whole or not)."""
    from transformers.trainer_utils import get_last_checkpoint

    directory = trainer_dir(work_dir)
    if not directory.is_dir():
        return None
    while (found := get_last_checkpoint(str(directory))) is not None and not is_complete(Path(found)):
        log.warning("checkpoint %s is partial (its worker died while writing it): using the previous one", found)
        shutil.rmtree(found)
    return found


def checkpoint_step(path: str) -> int:
    return int(Path(path).name.rsplit("-", 1)[1])


@dataclass
class RunState:
    base_metrics: dict[str, float] = field(default_factory=dict)
    best_value: float | None = None
    best_step: int | None = None
    # A reranker's first-stage weight at each evaluated step (str(step) -> w), for ``first_stage_weight: auto``.
    fusion_weights: dict[str, float] = field(default_factory=dict)
    # The base's per-query metrics on the test queries (step 0): the paired verdict's "before".
    base_test: dict[str, dict[str, float]] = field(default_factory=dict)

    def save(self, work_dir: Path) -> None:
        tmp = work_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(work_dir / STATE_FILE)

    @classmethod
    def load(cls, work_dir: Path) -> RunState | None:
        path = work_dir / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


def save_rows(work_dir: Path, rows: dict[str, list[Any]]) -> None:
    (work_dir / ROWS_FILE).write_text(json.dumps(rows))


def load_rows(work_dir: Path) -> dict[str, list[Any]] | None:
    path = work_dir / ROWS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_first_stage_run(work_dir: Path, run: dict[str, dict[str, float]]) -> None:
    """A reranker job's evaluation candidates: a resumed run reranks the same ones without re-encoding."""
    (work_dir / FIRST_STAGE_FILE).write_text(json.dumps(run))


def load_first_stage_run(work_dir: Path) -> dict[str, dict[str, float]] | None:
    path = work_dir / FIRST_STAGE_FILE
    return json.loads(path.read_text()) if path.exists() else None
