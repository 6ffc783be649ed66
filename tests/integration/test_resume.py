"""A worker killed with SIGKILL mid-job: a new worker takes the job over and resumes it from its
last checkpoint, with the learning-rate schedule continuing (not restarting) and no metric twice.

On the local store: the new worker resumes from the killed one's work dir on the same volume. The S3
layout of the same fault (the new worker on a fresh data dir, the checkpoint fetched from the store) is
`test_artifact_store_s3.py::test_job_resumes_on_another_data_dir_after_its_worker_is_killed`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Service, eventually, start_service, stop_service

MAX_STEPS = 12
PARAMS = {
    "batch_size": 8,
    "passage_max_len": 128,
    "logging_steps": 1,
    "checkpoint_steps": 2,
    "max_steps": MAX_STEPS,
    "warmup_ratio": 0.25,
    "learning_rate": 3e-5,
}


def expected_learning_rates(total: int, warmup_ratio: float, base_lr: float) -> list[float]:
    """The LR each step trains with under transformers' linear schedule, run uninterrupted."""
    import torch
    from transformers import TrainingArguments, get_linear_schedule_with_warmup

    warmup = TrainingArguments(output_dir="/tmp/unused", warmup_steps=warmup_ratio).get_warmup_steps(total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    rates = []
    for _ in range(total):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return rates


def _worker_pids(queue: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", f"-Q {queue},"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.integration
@pytest.mark.slow
def test_sigkilled_worker_job_resumes_from_checkpoint(tmp_path: Path, scifact_zip: bytes) -> None:
    queue = f"retune-resume-{uuid.uuid4().hex[:8]}"
    env = {"RETUNE_QUEUE": queue, "RETUNE_JOB_STALE_SECONDS": "3"}
    proc, service = start_service("embedded", tmp_path, env)
    second_worker = None
    try:
        second_worker = _kill_and_resume(service, tmp_path, queue, env, scifact_zip)
    finally:
        if second_worker is not None:
            os.killpg(second_worker.pid, signal.SIGKILL)
        stop_service(proc)


def _kill_and_resume(
    service: Service, tmp_path: Path, queue: str, env: dict[str, str], scifact_zip: bytes
) -> subprocess.Popen:
    client = service.client
    dataset = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)}).json()
    job = client.post(
        "/jobs",
        json={
            "kind": "embedder",
            "dataset_id": dataset["id"],
            "eval": {"split": "test", "max_queries": 5, "max_corpus_docs": 60},
            "params": PARAMS,
        },
    ).json()
    checkpoint = service.data_dir / "work" / job["id"] / "trainer" / "checkpoint-2"
    service.wait_for(f"/jobs/{job['id']}", lambda j: j["step"] >= 3 and checkpoint.exists(), timeout=300, interval=0.2)

    pids = _worker_pids(queue)
    assert pids, "the embedded worker process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = client.get(f"/jobs/{job['id']}").json()
    assert killed_at["status"] == "running" and killed_at["step"] < MAX_STEPS

    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=ROOT,
        env={**os.environ, **env, "RETUNE_DATA_DIR": str(service.data_dir), "HF_HUB_OFFLINE": "1"},
        stdout=(tmp_path / "worker2.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    time.sleep(1)
    final = service.wait_for(f"/jobs/{job['id']}", lambda j: j["status"] in {"succeeded", "failed"}, timeout=300)
    assert final["status"] == "succeeded", (final, (tmp_path / "worker2.log").read_text()[-3000:])
    assert final["attempts"] == 2
    assert "resumed from checkpoint at step" in final["message"]

    points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    loss_steps = [p["step"] for p in points if p["name"] == "loss"]
    assert loss_steps == list(range(1, MAX_STEPS + 1)), loss_steps  # each step once, none lost or doubled
    assert [p["step"] for p in points if p["name"] == "ndcg@10" and p["split"] == "validation"] == [0, MAX_STEPS]
    logged = [p["value"] for p in points if p["name"] == "learning_rate"]
    expected = expected_learning_rates(MAX_STEPS, PARAMS["warmup_ratio"], PARAMS["learning_rate"])
    assert logged == pytest.approx(expected, rel=1e-6, abs=1e-12), (logged, expected)
    work = service.data_dir / "work" / job["id"]
    eventually(lambda: not work.exists(), "the work dir is removed when the job ends")
    return worker
