"""The chaos soak's short version (bench/chaos_soak.py for about a minute): a worker SIGKILLed, the API
restarted, Redis restarted and PostgreSQL cut, each at least once, under searches and tiny jobs; then
no job lost, no metric point missing or twice, every model and index loadable, no unexplained 5xx."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.chaos_soak import FAULTS, JOB_PARAMS, SoakOptions, free_port, run_soak
from tests.conftest import missing, scifact_slice_zip
from tests.integration.conftest import Processes, kill_group, post_embedder_job, upload_dataset


@pytest.mark.integration
@pytest.mark.slow
def test_chaos_soak_short_loses_nothing(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed (the soak restarts a Redis of its own)")
    options = SoakOptions(
        tmp_path, scifact_slice_zip(n_train=24, n_test=10, n_distractors=40), seconds=40, seed=1,
        fault_gap=(3.0, 6.0), db_cut=(2.0, 4.0), jobs_in_flight=2, cancel_fraction=0.3, settle_seconds=300,
        job_params=JOB_PARAMS | {"max_steps": 4},
    )  # fmt: skip
    report = run_soak(options)
    print(json.dumps(report, indent=2))  # seen with -s: what was injected and answered

    assert report["violations"] == [], report
    assert report["lost"] == 0
    for kind in FAULTS:
        assert report["faults"][kind]["injected"] >= 1 and report["faults"][kind]["survived"] >= 1, report["faults"]
    assert report["jobs"].get("succeeded", 0) >= 1, report["jobs"]
    assert report["searches"]["200"] > 0 and report["searches"]["other_5xx"] == 0, report["searches"]
    assert report["artifacts"]["indexes_ready"] == report["artifacts"]["indexes"] >= 1


@pytest.mark.integration
def test_job_and_index_asked_for_while_redis_is_down_are_sent_once_it_is_back(
    tmp_path: Path, pg_env: dict[str, str], scifact_zip: bytes, processes: Processes
) -> None:
    """Seen building the chaos soak: a job or index build asked for while the broker was down ended `failed`
    (with a 503), though it was already in SQL. Now it is accepted and the sweep sends it later."""
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    port = free_port()
    env = pg_env | {"RETUNE_BROKER_URL": f"redis://127.0.0.1:{port}/0", "RETUNE_DATA_DIR": str(tmp_path / "data")}
    _, service = processes.service("postgres", tmp_path, env, api_only=True)
    dataset = upload_dataset(service, scifact_zip, "s.zip")
    job = post_embedder_job(service, dataset["id"], {"batch_size": 8, "passage_max_len": 64, "max_steps": 2})
    index = service.client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": "all-MiniLM-L6-v2"})
    assert job["status"] == "queued" and index.status_code == 202 and index.json()["status"] == "building"

    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                             stdout=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        processes.worker(tmp_path, env)  # its sweep at start sends what was never sent
        built = service.wait_for(f"/indexes/{index.json()['id']}", lambda i: i["status"] != "building", timeout=300)
        assert built["status"] == "ready", built
        sent = service.wait_for(f"/jobs/{job['id']}", lambda j: j["attempts"] >= 1, timeout=300)
        assert sent["status"] in {"running", "succeeded"} and sent["error"] is None, sent  # taken up: enough
    finally:
        kill_group(redis)
