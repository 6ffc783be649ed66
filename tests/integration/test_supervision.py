"""Workers that die, against real processes: the embedded `serve` restarts its worker (one beat, never
orphaned), /health tells when no worker is alive, a job of a dead worker shows `stalled`, a cancel sent
while the worker is dead ends the job, an index whose builder was killed is rebuilt, and a cpu-only
worker takes mining and index builds while the gpu queue has no worker.

The `serve` and dead-worker tests run embedded (local store): they test the embedded `serve`'s own
supervision and read its SQLite file; the cpu-only worker test runs on PostgreSQL + Redis + S3."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Processes, Service, job_finished, post_embedder_job, post_job, upload_dataset

FAST = {"RETUNE_JOB_STALE_SECONDS": "3", "RETUNE_RECOVERY_INTERVAL_SECONDS": "1"}
CHECKPOINTED = {"batch_size": 8, "passage_max_len": 64, "logging_steps": 1, "checkpoint_steps": 2, "max_steps": 10}
ENDLESS = {"batch_size": 8, "passage_max_len": 64, "logging_steps": 1, "max_steps": 100_000}
MINE = {"negative_rank_range": [5, 60], "negatives_per_query": 2, "false_negative_margin": None, "passage_max_len": 64}


def _children(proc: subprocess.Popen, role: str) -> list[psutil.Process]:
    """`serve`'s children running ``celery ... <role>`` (worker or beat)."""
    return [p for p in psutil.Process(proc.pid).children() if p.cmdline()[5:6] == [role]]


def _sigkill_worker_main(proc: subprocess.Popen) -> None:
    """SIGKILL the embedded worker's main process only; its pool processes must die with it."""
    (main,) = _children(proc, "worker")
    pool = main.children()
    main.kill()
    _, alive = psutil.wait_procs([main, *pool], timeout=15)
    assert not alive, f"pool processes outlived their killed worker: {alive}"


def _index_row(service: Service, index_id: str) -> tuple:
    with contextlib.closing(sqlite3.connect(service.data_dir / "retune.sqlite")) as db:
        return db.execute("SELECT heartbeat_at, attempts FROM indexes WHERE id = ?", (index_id,)).fetchone()


def _wait_rows(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _live_worker(service: Service, not_named: str | None = None) -> str:
    body = service.wait_for(
        "/health", lambda h: h["status"] == "ok" and any(w["name"] != not_named for w in h["workers"]), timeout=180
    )
    return next(w["name"] for w in body["workers"] if w["name"] != not_named)


@pytest.mark.integration
@pytest.mark.slow
def test_serve_restarts_a_sigkilled_worker_and_its_job_and_index_build_finish(
    tmp_path: Path, scifact_zip: bytes, processes: Processes
) -> None:
    queue = f"retune-sup-{uuid.uuid4().hex[:8]}"
    proc, service = processes.service("embedded", tmp_path, FAST | {"RETUNE_QUEUE": queue})
    client = service.client
    first = _live_worker(service)
    (beat,) = _children(proc, "beat")
    dataset = upload_dataset(service, scifact_zip, "scifact-slice.zip")
    job = post_embedder_job(service, dataset["id"], CHECKPOINTED)
    checkpoint = service.data_dir / "work" / job["id"] / "trainer" / "checkpoint-2"
    service.wait_for(f"/jobs/{job['id']}", lambda j: j["step"] >= 3 and checkpoint.exists(), interval=0.2)

    _sigkill_worker_main(proc)
    second = _live_worker(service, not_named=first)  # a new worker, started by serve itself
    final = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=300)
    assert final["status"] == "succeeded", (final, service.log_tail())
    assert final["attempts"] == 2 and final["resumed_from_step"] is not None
    assert 2 <= final["resumed_from_step"] < CHECKPOINTED["max_steps"]
    assert f"resumed from checkpoint at step {final['resumed_from_step']}" in final["message"]
    assert not final["stalled"]

    # The beat belongs to serve, not to the killed worker: the same one, still the only one.
    assert [p.pid for p in _children(proc, "beat")] == [beat.pid] and beat.is_running()
    beats = subprocess.run(["pgrep", "-f", "--", f"celerybeat-{queue}"], capture_output=True, text=True)
    assert beats.stdout.split() == [str(beat.pid)], beats.stdout

    index = client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": "all-MiniLM-L6-v2"}).json()
    _wait_rows(lambda: _index_row(service, index["id"])[0], "the index build to be claimed")
    _sigkill_worker_main(proc)
    _live_worker(service, not_named=second)
    built = service.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] != "building", timeout=300)
    assert built["status"] == "ready", (built, service.log_tail())
    assert _index_row(service, index["id"])[1] == 2, "the build was started once more, not left building"


@pytest.mark.integration
@pytest.mark.slow
def test_dead_worker_degraded_health_stalled_job_and_cancel_ends_it(
    tmp_path: Path, scifact_zip: bytes, processes: Processes
) -> None:
    env = FAST | {"RETUNE_QUEUE": f"retune-dead-{uuid.uuid4().hex[:8]}", "RETUNE_DATA_DIR": str(tmp_path / "data")}
    _, service = processes.service("embedded", tmp_path, env, api_only=True)
    client = service.client
    alone = client.get("/health")
    assert alone.status_code == 200, alone.text
    assert alone.json()["status"] == "degraded" and alone.json()["workers"] == []
    assert set(alone.json()["queues"].values()) == {0}

    worker = processes.worker(tmp_path, env)
    _live_worker(service)
    dataset = upload_dataset(service, scifact_zip, "scifact-slice.zip")
    job = post_embedder_job(service, dataset["id"], ENDLESS)
    service.wait_for(f"/jobs/{job['id']}", lambda j: j["status"] == "running" and j["step"] >= 1, timeout=300)
    assert client.get(f"/jobs/{job['id']}").json()["stalled"] is False

    os.killpg(worker.pid, signal.SIGKILL)
    stalled = service.wait_for(f"/jobs/{job['id']}", lambda j: j["stalled"], timeout=30)
    assert stalled["status"] == "running"
    service.wait_for("/health", lambda h: h["status"] == "degraded" and h["workers"] == [], timeout=30)

    cancel = client.post(f"/jobs/{job['id']}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelling", cancel.text
    processes.worker(tmp_path, env)
    ended = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=180)
    assert ended["status"] == "cancelled", (ended, service.log_tail())
    assert "cancelled while its worker was down" in ended["message"]
    assert not ended["stalled"]
    _live_worker(service)


@pytest.mark.integration
@pytest.mark.slow
def test_cpu_only_worker_runs_mining_and_index_builds_while_training_waits(
    tmp_path: Path, scifact_zip: bytes, pg_s3_env: dict[str, str], processes: Processes
) -> None:
    env = pg_s3_env | FAST | {"RETUNE_DATA_DIR": str(tmp_path / "data")}
    _, service = processes.service("postgres", tmp_path, env, api_only=True)
    client = service.client
    processes.worker(tmp_path, env | {"RETUNE_WORKER_QUEUES": "cpu"})
    cpu_queue, gpu_queue = f"{env['RETUNE_QUEUE']}.cpu", env["RETUNE_QUEUE"]
    health = service.wait_for("/health", lambda h: h["queues"][cpu_queue] == 1, timeout=180)
    assert health["status"] == "degraded" and health["queues"][gpu_queue] == 0
    assert [w["queues"] for w in health["workers"]] == [cpu_queue]

    dataset = upload_dataset(service, scifact_zip, "scifact-slice.zip")
    training = post_embedder_job(service, dataset["id"], CHECKPOINTED)
    mining = post_job(service, {"kind": "mine_negatives", "dataset_id": dataset["id"], "params": MINE})
    index = client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": "all-MiniLM-L6-v2"}).json()

    mined = service.wait_for(f"/jobs/{mining['id']}", job_finished, timeout=300)
    assert mined["status"] == "succeeded", (mined, service.log_tail())
    built = service.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] != "building", timeout=300)
    assert built["status"] == "ready", built
    waiting = client.get(f"/jobs/{training['id']}").json()
    assert waiting["status"] == "queued" and waiting["attempts"] == 0, "a training job ran on a cpu-only worker"
    assert client.post(f"/jobs/{training['id']}/cancel").json()["status"] == "cancelled"
