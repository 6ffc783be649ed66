"""Cancel during a job's step-0 evaluation (the base model encoding the whole corpus, before any training
step): the API says ``cancelling`` until the worker stops, then ``cancelled``, never ``failed``."""

from __future__ import annotations

import time

import pytest

from tests.conftest import scifact_slice_zip
from tests.integration.conftest import Service, job_finished

# 40 + 20 queries against ~650 documents: the step-0 encoding takes tens of seconds on a CPU.
SLOW_EVAL_ZIP_DISTRACTORS = 600
PARAMS = {"max_steps": 2, "batch_size": 4, "passage_max_len": 128, "logging_steps": 1}


@pytest.mark.integration
def test_cancel_during_step0_evaluation(service: Service) -> None:
    client = service.client
    archive = scifact_slice_zip(n_distractors=SLOW_EVAL_ZIP_DISTRACTORS)
    dataset = client.post("/datasets", files={"file": ("scifact-big.zip", archive)}).json()
    job = client.post("/jobs", json={"kind": "embedder", "dataset_id": dataset["id"], "params": PARAMS}).json()
    # The model is loaded and the base's corpus encoding begins.
    service.wait_for(f"/jobs/{job['id']}", lambda j: "step 0: evaluating the base model" in (j["message"] or ""))

    answer = client.post(f"/jobs/{job['id']}/cancel")
    asked_at = time.monotonic()
    assert answer.status_code == 200 and answer.json()["status"] == "cancelling", answer.text
    seen: list[str] = []

    def ended(j: dict) -> bool:
        seen.append(j["status"])
        return job_finished(j)

    final = service.wait_for(f"/jobs/{job['id']}", ended, timeout=180, interval=0.2)
    stopped_after = time.monotonic() - asked_at
    assert final["status"] == "cancelled", final
    assert set(seen) <= {"cancelling", "cancelled"}, seen
    assert "cancelled during the step-0 evaluation, while encoding the corpus (" in final["message"], final
    assert final["error"] is None and final["model_id"] is None and final["step"] == 0
    assert client.get(f"/jobs/{job['id']}/metrics").json()["points"] == []  # stopped before any step-0 figure
    assert stopped_after < 60, stopped_after  # one chunk of 128 passages, not the rest of the corpus

    assert (service.data_dir / "work" / job["id"]).is_dir(), "a cancelled job keeps its work dir for a retry"
    retried = client.post(f"/jobs/{job['id']}/retry")  # a cancelled job can be taken up again ...
    assert retried.status_code == 202 and retried.json()["status"] == "queued", retried.text
    client.post(f"/jobs/{job['id']}/cancel")  # ... and cancelled again (queued: at once; taken: at its next check)
    again = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=180, interval=0.2)
    assert again["status"] == "cancelled", again
