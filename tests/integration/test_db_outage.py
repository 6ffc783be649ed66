"""PostgreSQL unreachable for ~10 s while a job trains (PostgreSQL + Redis + S3, the worker's connection cut by a
TCP proxy): the job keeps training, its metrics and events wait in the worker and land once the database
is back, in order, none lost and none twice; the job succeeds on its first attempt."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import SMALL_EVAL, eventually, job_finished, start_service, start_worker, stop_service
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_faults import TINY

CUT_SECONDS = 10


@pytest.mark.integration
@pytest.mark.slow
def test_job_trains_through_a_database_outage_and_loses_no_metric(
    tmp_path: Path,
    pg_s3_env: dict[str, str],
    scifact_zip: bytes,
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.start()
    cut_url = pg_s3_env["RETUNE_DATABASE_URL"].replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    env = pg_s3_env | {"RETUNE_DATA_DIR": str(tmp_path / "data")}
    proc, service = start_service("postgres", tmp_path, env, api_only=True)  # the API reaches PostgreSQL directly
    worker_dir = tmp_path / "worker"  # another host: only PostgreSQL, Redis and the store are shared
    worker = start_worker(tmp_path, env | {"RETUNE_DATABASE_URL": cut_url, "RETUNE_DATA_DIR": str(worker_dir)})
    try:
        dataset = service.client.post("/datasets", files={"file": ("s.zip", scifact_zip)}).json()
        body = {"kind": "embedder", "dataset_id": dataset["id"], "eval": SMALL_EVAL,
                "params": TINY | {"max_steps": 12, "checkpoint_steps": 4}}  # fmt: skip
        job = service.client.post("/jobs", json=body).json()
        service.wait_for(f"/jobs/{job['id']}", lambda j: j["step"] >= 1, timeout=300, interval=0.2)

        proxy.stop()
        cut_at = datetime.now(UTC)
        step_at_cut = service.client.get(f"/jobs/{job['id']}").json()["step"]
        _keep_cut(tmp_path)
        frozen = service.client.get(f"/jobs/{job['id']}").json()
        restored_at = datetime.now(UTC)
        proxy.start()
        assert frozen["status"] == "running" and frozen["step"] == step_at_cut, "the worker really was cut off"

        final = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=300)
        assert final["status"] == "succeeded", (final, service.log_tail())
        assert final["attempts"] == 1, "the job was never failed, nor taken over"
        _assert_complete_and_once(service, final, cut_at, restored_at)
        work = worker_dir / "work" / job["id"]
        eventually(
            lambda: not work.exists() and not service.store.leftovers(f"work/{job['id']}"),
            "a success removes the checkpoints, here and in the store",
        )
    finally:
        proxy.stop()
        stop_service(proc)
        os.killpg(worker.pid, signal.SIGKILL)


def _keep_cut(tmp_path: Path) -> None:
    """At least CUT_SECONDS, and until the worker logged two training steps ended while cut off (on a loaded
    machine a step can take longer than the cut): its metric events are then made during the cut."""
    (log,) = tmp_path.glob("worker-*.log")
    steps_at_cut = log.read_text(errors="replace").count("{'loss'")
    deadline, until = time.monotonic() + 300, time.monotonic() + CUT_SECONDS
    while time.monotonic() < until or log.read_text(errors="replace").count("{'loss'") < steps_at_cut + 2:
        assert time.monotonic() < deadline, "the worker trained no step while the database was cut"
        time.sleep(0.5)


def _assert_complete_and_once(service, final: dict, cut_at: datetime, restored_at: datetime) -> None:  # type: ignore[no-untyped-def]
    points = service.client.get(f"/jobs/{final['id']}/metrics").json()["points"]
    keys = Counter((p["step"], p["name"], p["split"]) for p in points)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    assert [p["step"] for p in points if p["name"] == "loss"] == list(range(1, final["total_steps"] + 1))

    found = service.client.get(f"/jobs/{final['id']}/events", params={"limit": 1000}).json()["data"]
    statuses = [e["data"]["status"] for e in found if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"], statuses
    train = [e for e in found if e["type"] == "metrics" and e["data"]["split"] == "train"]
    assert [e["data"]["step"] for e in train] == list(range(1, final["total_steps"] + 1)), "in order, each once"
    made_during_cut = [e for e in train if cut_at < datetime.fromisoformat(e["created_at"]) < restored_at]
    assert made_during_cut, "the job went on training while the database was unreachable"
    made = [datetime.fromisoformat(e["created_at"]) for e in found]
    assert made == sorted(made), "ids follow the order the worker made the events in"
