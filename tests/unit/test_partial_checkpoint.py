"""A worker killed while writing a checkpoint leaves a partial folder: resume uses the previous one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.training.checkpoints import is_complete, last_checkpoint, trainer_dir


class KilledWhileSaving(BaseException):
    """Stands for the SIGKILL: raised mid-checkpoint, it leaves the folder as the kill would."""


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def _trainer(work_dir: Path, max_steps: int):  # type: ignore[no-untyped-def]
    from transformers import Trainer, TrainingArguments

    generator = torch.Generator().manual_seed(0)
    rows = [{"x": torch.randn(4, generator=generator), "labels": torch.randn((), generator=generator)}
            for _ in range(16)]  # fmt: skip
    args = TrainingArguments(
        output_dir=str(trainer_dir(work_dir)), max_steps=max_steps, save_strategy="steps", save_steps=2,
        save_total_limit=1, per_device_train_batch_size=2, report_to=[], use_cpu=True, logging_strategy="no",
        dataloader_num_workers=0,
    )  # fmt: skip
    return Trainer(model=Tiny(), args=args, train_dataset=rows)


def test_checkpoint_cut_while_written_is_dropped_and_the_previous_one_resumed(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_steps=6)
    save_rng_state = trainer._save_rng_state

    def killed_at_step_6(output_dir: str) -> None:  # after the model and optimizer, before trainer_state.json
        if trainer.state.global_step == 6:
            raise KilledWhileSaving
        save_rng_state(output_dir)

    trainer._save_rng_state = killed_at_step_6
    with pytest.raises(KilledWhileSaving):
        trainer.train()
    partial, previous = trainer_dir(tmp_path) / "checkpoint-6", trainer_dir(tmp_path) / "checkpoint-4"
    assert (partial / "model.safetensors").exists() and not is_complete(partial)
    assert is_complete(previous), "the older checkpoint is rotated out only after the newer one is whole"

    assert last_checkpoint(tmp_path) == str(previous)
    assert not partial.exists(), "the partial folder is removed, so the resumed run writes it again whole"

    resumed = _trainer(tmp_path, max_steps=6)
    resumed.train(resume_from_checkpoint=last_checkpoint(tmp_path))
    assert resumed.state.global_step == 6
    assert last_checkpoint(tmp_path) == str(partial) and is_complete(partial)


def test_truncated_trainer_state_is_partial(tmp_path: Path) -> None:
    whole, cut = trainer_dir(tmp_path) / "checkpoint-2", trainer_dir(tmp_path) / "checkpoint-4"
    for folder in (whole, cut):
        folder.mkdir(parents=True)
    (whole / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (cut / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    assert last_checkpoint(tmp_path) == str(whole) and not cut.exists()
    (whole / "trainer_state.json").write_text(json.dumps({"global_step": 3}))  # another run's state
    assert last_checkpoint(tmp_path) is None
