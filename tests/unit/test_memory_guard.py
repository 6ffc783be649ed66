"""The memory guard: a job whose expected peak does not fit is refused at creation or held in the queue, never
started (so never killed for memory); the estimate covers the measured peaks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.errors import JobTooLargeError
from app.db import session as db_session
from app.db.tables import Base, Dataset, Job
from app.services import memory_guard
from app.services.jobs import create_job, validate_params
from app.services.models import ensure_bundled_models
from bench.common import RESULTS
from bench.train_memory import BASE

BEIR_STATS = {"qrels": {"train": {"queries": 10}, "test": {"queries": 5}}}
GIB = 2**30


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """A real SQLite database behind app.db.session, as a worker process has."""
    monkeypatch.setenv("RETUNE_DATA_DIR", str(tmp_path))
    for cached in (get_settings, db_session.get_engine, db_session.get_sessionmaker):
        cached.cache_clear()
    Base.metadata.create_all(db_session.get_engine())
    with db_session.session_scope() as s:
        ensure_bundled_models(s)
        s.add(Dataset(id="ds", name="d", format="beir", path="datasets/ds", stats=BEIR_STATS))
    with db_session.get_sessionmaker()() as s:
        yield s
    db_session.get_engine().dispose()
    for cached in (get_settings, db_session.get_engine, db_session.get_sessionmaker):
        cached.cache_clear()


def default_estimate(kind: str = "embedder", **params: object) -> int:
    return memory_guard.estimate_peak(kind, validate_params(kind, dict(params))).peak_bytes


def test_too_big_a_job_is_refused_at_creation_with_what_to_lower(database: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_memory_bytes=default_estimate() - 1)
    with pytest.raises(JobTooLargeError) as refused:
        create_job(database, settings, "embedder", "ds", None, {"split": "test"}, {})
    assert refused.value.status_code == 422
    assert "expected peak memory" in refused.value.message and "batch_size" in refused.value.message
    assert database.query(Job).count() == 0  # nothing was queued


def test_a_job_that_does_not_fit_now_is_held_in_the_queue_not_started(
    database: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services.job_runner import run_job

    # What the kernel has free is not this test's to decide (the machine is shared): plenty, so the
    # capacity left by the running job is what holds the second one.
    monkeypatch.setattr(memory_guard, "memory_free_now", lambda: 1 << 50)
    need = default_estimate()
    settings = Settings(data_dir=tmp_path, worker_memory_bytes=int(need * 1.5))  # one fits, two do not
    running = Job(kind="embedder", dataset_id="ds", base_model="all-MiniLM-L6-v2", status="running",
                  params=validate_params("embedder", {}))  # fmt: skip
    queued = Job(
        kind="embedder", dataset_id="ds", base_model="all-MiniLM-L6-v2", params=validate_params("embedder", {})
    )
    database.add_all([running, queued])
    database.commit()

    run_job(queued.id, settings)  # a worker receives the task
    database.refresh(queued)
    assert (queued.status, queued.attempts, queued.started_at) == ("queued", 0, None)
    assert queued.message is not None and queued.message.startswith("waiting for memory")

    two_jobs_fit = Settings(data_dir=tmp_path, worker_memory_bytes=24 * GIB)  # the development machine's RAM
    assert memory_guard.hold_reason(queued.id, two_jobs_fit) is None  # two default jobs at once fit

    running.status = "succeeded"
    database.commit()
    assert memory_guard.hold_reason(queued.id, settings) is None  # memory freed: the next delivery runs it


def test_the_estimate_covers_every_measured_peak() -> None:
    """bench.train_memory's latest peaks (bench/results/train_memory.json) are at or under the guard's estimate."""
    runs = json.loads((RESULTS / "train_memory.json").read_text())["runs"]
    checked = 0
    for label, run in runs.items():
        config = BASE | run["config"]
        if config["mode"] == "eval":  # the encode a mining job or an evaluation does
            assert run["peak_rss"] <= default_estimate("mine_negatives", passage_max_len=config["seq_len"]), label
            continue
        if config["mode"] != "train" or config["attn"] == "eager" or config["gradient_checkpointing"]:
            continue  # the guard estimates the paths jobs take
        params = {k: config[k] for k in ("batch_size", "cached_loss", "mini_batch_size")}
        params |= {"passage_max_len": config["seq_len"], "attention_dropout": run.get("attention_dropout", 0.1)}
        assert run["peak_rss"] <= default_estimate(**params), label
        checked += 1
    assert checked >= 3


def test_a_wider_model_is_expected_to_need_more(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768, "num_hidden_layers": 12}))
    assert memory_guard.model_scale(str(tmp_path)) == 4.0
    assert memory_guard.model_scale(str(tmp_path / "missing")) == 1.0
    params = validate_params("embedder", {})
    assert memory_guard.estimate_peak("embedder", params, 4.0).peak_bytes > 3 * default_estimate()


def test_the_memory_there_is_is_read_from_the_machine(tmp_path: Path) -> None:
    assert (memory_guard.memory_free_now() or 0) > 0
    assert (memory_guard.memory_capacity(Settings(data_dir=tmp_path)) or 0) >= (memory_guard.memory_free_now() or 0)
    assert memory_guard.memory_capacity(Settings(data_dir=tmp_path, worker_memory_bytes=GIB)) == GIB
