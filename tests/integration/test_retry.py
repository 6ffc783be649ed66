"""A real training error fails the job and keeps its last checkpoint; `retune jobs retry ID`
(POST /jobs/{id}/retry) queues it again and the new attempt resumes from that checkpoint. On the
production layout (PostgreSQL + Redis + S3): the checkpoint is kept in the store too, and goes with the success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import (
    ADMIN_KEY,
    ROOT,
    SMALL_EVAL,
    Service,
    eventually,
    job_finished,
    start_service,
    stop_service,
)
from tests.integration.test_faults import TINY

STEPS = 4


@pytest.mark.integration
@pytest.mark.slow
def test_failed_job_keeps_its_checkpoint_and_a_retry_resumes_from_it(
    tmp_path: Path, scifact_zip: bytes, pg_s3_env: dict[str, str]
) -> None:
    proc, service = start_service("postgres-s3", tmp_path, pg_s3_env)
    try:
        _fail_then_retry(service, scifact_zip)
    finally:
        stop_service(proc)


def _fail_then_retry(service: Service, scifact_zip: bytes) -> None:
    client = service.client
    dataset = client.post("/datasets", files={"file": ("s.zip", scifact_zip)}).json()
    body = {"kind": "embedder", "dataset_id": dataset["id"], "eval": SMALL_EVAL,
            "params": TINY | {"max_steps": STEPS, "checkpoint_steps": 2}}  # fmt: skip
    job = client.post("/jobs", json=body).json()
    work = service.data_dir / "work" / job["id"]
    work.mkdir(parents=True, exist_ok=True)
    (work / "best").write_text("a file where the chosen model's folder goes: saving it is an OSError")

    failed = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=600)
    assert failed["status"] == "failed" and "NotADirectoryError" in failed["error"], failed
    checkpoint = work / "trainer" / f"checkpoint-{STEPS}"
    assert (checkpoint / "trainer_state.json").exists(), "a failure keeps the last checkpoint"
    assert service.store.exists(f"work/{job['id']}/checkpoint-{STEPS}"), "in the store too"
    assert client.post(f"/jobs/{uuid.uuid4().hex}/retry").status_code == 404

    (work / "best").unlink()  # the cause is fixed; the job is retried with the CLI
    retried = _cli("jobs", "retry", job["id"], "--json", url=service.url)
    # The reply reads the row after the task is sent, so a fast worker may already have claimed it; the
    # status events below show it was queued first.
    assert retried["status"] in {"queued", "running"} and retried["error"] is None, retried

    final = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=600)
    assert final["status"] == "succeeded", (final, service.log_tail())
    assert final["attempts"] == 2 and f"resumed from checkpoint at step {STEPS}" in final["message"], final
    points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["name"] == "loss"] == list(range(1, STEPS + 1)), "no step trained again"
    found = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    statuses = [e["data"]["status"] for e in found if e["type"] == "status"]
    assert statuses == ["queued", "running", "failed", "queued", "resumed", "succeeded"], statuses
    eventually(
        lambda: not work.exists() and not service.store.leftovers(f"work/{job['id']}"),
        "a success removes the checkpoints, here and in the store",
    )

    again = client.post(f"/jobs/{job['id']}/retry")
    assert again.status_code == 409 and "succeeded" in again.json()["detail"], again.text


def _cli(*args: str, url: str) -> dict:
    env = {**os.environ, "RETUNE_URL": url, "RETUNE_API_KEY": ADMIN_KEY, "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-m", "app.client", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    return json.loads(run.stdout)
