"""Hard-negative mining through HTTP with a real worker: a mine_negatives job writes a new training
dataset, which is listed like an upload and trains an embedder (distilling from the mined scores).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Service, job_finished

# Short texts keep both jobs to seconds on a CPU (SciFact abstracts are long). No false-negative margin
# here (the unit tests cover it): with it, a query whose positive the model scores near 0 keeps no
# negative, and a row without teacher scores would turn distillation off for the training job.
MINE = {"negative_rank_range": [5, 60], "negatives_per_query": 2, "false_negative_margin": None, "passage_max_len": 128}
TINY_EMBEDDER = {"max_steps": 2, "batch_size": 4, "passage_max_len": 64, "logging_steps": 1}


@pytest.mark.integration
@pytest.mark.slow
def test_mine_negatives_job_writes_a_training_dataset_that_trains(service: Service, scifact_zip: bytes) -> None:
    client = service.client
    source = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)}, data={"name": "scifact"})
    assert source.status_code == 201, source.text
    source = source.json()

    # Refused up front: mining evaluates nothing, and its params are its own.
    for body, named in (
        ({"eval": {"split": "test"}}, "eval"),
        ({"params": {"epochs": 1}}, "params.epochs"),
        ({"params": {"negative_rank_range": [50, 10]}}, "negative_rank_range"),
    ):
        refused = client.post("/jobs", json={"kind": "mine_negatives", "dataset_id": source["id"], **body})
        assert refused.status_code == 422 and named in refused.text, refused.text

    created = client.post("/jobs", json={"kind": "mine_negatives", "dataset_id": source["id"], "params": MINE})
    assert created.status_code == 202, created.text
    assert created.json()["eval"] == {} and created.json()["output_dataset_id"] is None
    job = service.wait_for(f"/jobs/{created.json()['id']}", job_finished, timeout=180)
    assert job["status"] == "succeeded", (job, service.log_tail())
    assert job["model_id"] is None and job["base_model"] == "all-MiniLM-L6-v2"
    assert job["total_steps"] and job["step"] == job["total_steps"]
    assert "mined" in job["message"] and job["output_dataset_id"] in job["message"]

    mined = client.get(f"/datasets/{job['output_dataset_id']}")
    assert mined.status_code == 200, mined.text
    mined = mined.json()
    assert mined["format"] == "training_jsonl"
    assert mined["name"] == "scifact + mined negatives (all-MiniLM-L6-v2)"
    train_queries = source["stats"]["qrels"]["train"]["queries"]
    assert mined["stats"]["examples"] == mined["stats"]["qrels"]["train"]["queries"] == train_queries

    # The stored file: every query with 2 mined negatives, scored, none of them one of its positives.
    lines = service.store.read_text(f"datasets/{mined['id']}", "train.jsonl").splitlines()
    assert len(lines) == train_queries
    for row in map(json.loads, lines):
        assert len(row["neg"]) == len(row["neg_scores"]) == 2
        assert len(row["pos"]) == len(row["pos_scores"]) >= 1
        assert not set(row["neg"]) & set(row["pos"])
    # The mined file keeps where its queries came from: the source's query ids by text.
    written = json.loads(service.store.read_text(f"datasets/{mined['id']}", "dataset.json"))
    assert written["teacher_scores"] == "first_stage_cosine"
    assert len(written["source_query_ids"]) == train_queries
    assert {json.loads(line)["query"] for line in lines} == set(written["source_query_ids"])

    trained = client.post(
        "/jobs",
        json={
            "kind": "embedder",
            "dataset_id": mined["id"],
            "eval": {"holdout_fraction": 0.25},
            # Asked for: by default ("auto") a mine_negatives file's cosines are not distilled (nearly flat).
            "params": {**TINY_EMBEDDER, "knowledge_distillation": "on"},
        },
    )
    assert trained.status_code == 202, trained.text
    trained = service.wait_for(f"/jobs/{trained.json()['id']}", job_finished, timeout=240)
    assert trained["status"] == "succeeded", (trained, service.log_tail())
    assert trained["step"] == 2 and trained["model_id"]
    assert "knowledge distillation: on" in trained["message"], trained["message"]
    names = {p["name"] for p in client.get(f"/jobs/{trained['id']}/metrics").json()["points"]}
    assert {"loss", "ndcg@10"} <= names
