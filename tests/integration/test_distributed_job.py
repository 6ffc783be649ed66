"""An embedder job on two devices (two gloo processes on the CPU) through the real service and worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import scifact_slice_zip
from tests.integration.conftest import Processes, run_job, upload_dataset

SMALL_EVAL = {"split": "test", "max_queries": 5, "max_corpus_docs": 40}


@pytest.mark.integration
def test_two_device_job_succeeds_with_one_loss_per_step(tmp_path: Path, processes: Processes) -> None:
    _, service = processes.service("embedded", tmp_path, {"RETUNE_WORKER_CONCURRENCY": "1"})
    dataset = upload_dataset(service, scifact_slice_zip(n_train=12, n_test=5, n_distractors=20), "s.zip")

    refused = service.client.post(
        "/jobs",
        json={"kind": "embedder", "dataset_id": dataset["id"], "eval": SMALL_EVAL,
              "params": {"devices": 3, "batch_size": 8}},
    )  # fmt: skip
    assert refused.status_code == 422, refused.text
    assert "not divisible by the 3 devices" in refused.text

    # An evaluation at step 1 (rank 0 alone, the other waiting) and a checkpoint at each step (copied to the
    # artifact store by the worker while the ranks wait) in the middle of the run.
    params = {"devices": 2, "batch_size": 4, "max_steps": 2, "logging_steps": 1, "passage_max_len": 48,
              "eval_steps": 1, "checkpoint_steps": 1}  # fmt: skip
    job = run_job(
        service, {"kind": "embedder", "dataset_id": dataset["id"], "eval": SMALL_EVAL, "params": params}, timeout=400
    )
    assert "training on 2 devices (cpu, cpu), one process each, DDP gloo" in job["message"]
    points = service.client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["name"] == "loss"] == [1, 2]  # rank 0 alone reports
    validation = [p["step"] for p in points if p["name"] == "ndcg@10" and p["split"] == "validation"]
    assert validation == [0, 1, 2]
    assert job["model_id"]
