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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "retune_state.json"
ROWS_FILE = "train_rows.json"
FIRST_STAGE_FILE = "first_stage_run.json"
BEST_DIR = "best"


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


def chosen_dir(work_dir: Path) -> Path:
    """The folder of the best evaluated state, after undoing a swap a killed worker left half done."""
    path = work_dir / BEST_DIR
    recover_dir(path)
    return path


def _staged(target: Path) -> Path:
    return target.with_name(f"{target.name}.partial")


def _previous(target: Path) -> Path:
    return target.with_name(f"{target.name}.previous")


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Make ``target`` the folder ``write`` fills, whole or not at all.

    ``save_pretrained`` overwrites a folder file by file: a worker killed in the middle left old and new
    weights together in ``best/``, which the job then published or resumed from. So ``write`` fills a
    staging folder beside it, which takes the old folder's place by two renames; a kill at any point
    leaves the old folder, the new one, or the old one moved aside, which :func:`recover_dir` puts back.
    A file where the folder goes is an error (``NotADirectoryError``), as it was for the in-place save.
    """
    staged, previous = _staged(target), _previous(target)
    shutil.rmtree(staged, ignore_errors=True)
    write(staged)
    if target.is_dir():
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
    staged.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """After a kill inside :func:`replace_dir`: the old folder back if the new one never took its place,
    and no staging folder left (it would be uploaded with the checkpoints)."""
    previous = _previous(target)
    if not target.exists() and previous.is_dir():
        previous.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(_staged(target), ignore_errors=True)


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
