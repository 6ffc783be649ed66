"""The user's whole path through HTTP, with a real worker: upload, fine-tune, watch, index, search.

A tiny but real fine-tune: 40 SciFact training queries, 20 official test queries held out, 162 docs.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from app.retrieval.fusion import min_max
from tests.integration.conftest import Service, job_finished

TINY_EMBEDDER = {"epochs": 1, "batch_size": 8, "passage_max_len": 128, "logging_steps": 1}
TINY_RERANKER = {"epochs": 1, "batch_size": 4, "group_size": 4, "max_length": 128, "recall_k": 10, "logging_steps": 1}
HEADLINE = {"ndcg@10", "recall@100", "mrr@10"}


def _watch_job(service: Service, job_id: str, timeout: float = 400) -> tuple[dict, list[tuple[str, int]]]:
    """Poll the job and its metrics until it ends; returns the final job and (status, #points) seen."""
    seen: list[tuple[str, int]] = []

    def done(job: dict) -> bool:
        points = service.client.get(f"/jobs/{job_id}/metrics").json()["points"]
        seen.append((job["status"], len(points)))
        return job_finished(job)

    job = service.wait_for(f"/jobs/{job_id}", done, timeout=timeout)
    return job, seen


@pytest.mark.integration
@pytest.mark.slow
def test_upload_finetune_watch_index_search(service: Service, scifact_zip: bytes) -> None:
    client = service.client

    upload = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)}, data={"name": "scifact"})
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    assert dataset["format"] == "beir"
    assert dataset["stats"]["qrels"]["train"]["queries"] == 40
    assert dataset["stats"]["qrels"]["test"]["queries"] == 20
    assert client.get(f"/datasets/{dataset['id']}").json()["stats"] == dataset["stats"]

    models = {m["id"]: m for m in client.get("/models").json()}
    assert models["all-MiniLM-L6-v2"]["kind"] == "embedder"

    created = client.post(
        "/jobs",
        json={"kind": "embedder", "dataset_id": dataset["id"], "eval": {"split": "test"}, "params": TINY_EMBEDDER},
    )
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued"
    job, seen = _watch_job(service, created.json()["id"])
    assert job["status"] == "succeeded", (job, service.log_tail())
    assert job["started_at"] and job["finished_at"]

    points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    final_count = len(points)
    # Metrics were visible while the job ran, and grew.
    assert any(status == "running" and 0 < n < final_count for status, n in seen), seen
    last_step = max(p["step"] for p in points)
    assert last_step == job["total_steps"] > 0
    # Choices on validation (step 0 and the end); test only for the base and the chosen model.
    for step in (0, last_step):
        names = {p["name"] for p in points if p["step"] == step and p["split"] == "validation"}
        assert names >= HEADLINE, (step, names)
    test_steps = sorted({p["step"] for p in points if p["split"] == "test" and p["name"] == "ndcg@10"})
    assert len(test_steps) == 2 and test_steps[0] == 0, test_steps
    assert sum(p["name"] == "loss" for p in points) == last_step  # logging_steps=1

    model_id = job["model_id"]
    models = {m["id"]: m for m in client.get("/models").json()}
    assert models[model_id]["kind"] == "embedder"
    assert models[model_id]["job_id"] == job["id"]
    verdict = models[model_id]["verdict"]
    assert verdict["result"] in {"better", "not_better", "worse"} and verdict["queries"] == 20
    assert verdict["ci_low"] <= verdict["delta"] <= verdict["ci_high"]
    assert models[model_id]["better_than_base"] == (verdict["result"] == "better")
    assert job["verdict"] == verdict and job["better_than_base"] == models[model_id]["better_than_base"]

    _chained_job_evaluating_on_trained_queries_is_refused(service, dataset["id"], model_id)
    # The evaluated checkpoints: step 0 (the base) and the end; the chosen one is where test was measured.
    found = client.get(f"/jobs/{job['id']}/checkpoints").json()
    assert [c["step"] for c in found["checkpoints"]] == [0, last_step]
    assert found["chosen_step"] == test_steps[1] and sum(c["chosen"] for c in found["checkpoints"]) == 1
    assert found["checkpoints"][-1]["metrics"].keys() >= HEADLINE

    index = client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": model_id})
    assert index.status_code == 202, index.text
    index = service.wait_for(f"/indexes/{index.json()['id']}", lambda i: i["status"] != "building", timeout=180)
    assert index["status"] == "ready", index
    assert index["docs_encoded"] == index["num_docs"] == dataset["stats"]["docs"]  # the build reported progress
    assert index["num_docs"] == dataset["stats"]["docs"] and index["dim"] == 384

    query = "Vitamin D deficiency is associated with an increased risk of infection."
    plain = client.post("/search", json={"index_id": index["id"], "query": query, "top_k": 5, "recall_k": 50})
    assert plain.status_code == 200, plain.text
    results = plain.json()["results"]
    assert len(results) == 5
    assert all(r["text"] and r["rerank_score"] is None for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    # An embedder is not a reranker: refused instead of scoring with a random head.
    refused = client.post("/search", json={"index_id": index["id"], "query": query, "reranker_id": "all-MiniLM-L6-v2"})
    assert refused.status_code == 422 and "reranker" in refused.json()["detail"]
    forced = {"index_id": index["id"], "query": query, "reranker_id": "all-MiniLM-L6-v2", "force": True}
    forced_response = client.post("/search", json=forced | {"recall_k": 5, "top_k": 5})
    assert forced_response.status_code == 200, forced_response.text  # the caller asked for it explicitly
    assert all(r["rerank_score"] is not None for r in forced_response.json()["results"])

    rr = client.post(
        "/jobs",
        json={
            "kind": "reranker",
            "dataset_id": dataset["id"],
            "eval": {"split": "test"},
            "params": {**TINY_RERANKER, "candidate_model": model_id},
        },
    )
    assert rr.status_code == 202, rr.text
    rr_job, _ = _watch_job(service, rr.json()["id"])
    assert rr_job["status"] == "succeeded", (rr_job, service.log_tail())
    rr_points = client.get(f"/jobs/{rr_job['id']}/metrics").json()["points"]
    assert {"score_std", "positive_share", "collapsed"} <= {p["name"] for p in rr_points}
    assert {p["name"] for p in rr_points if p["split"] == "test/first_stage"} >= HEADLINE
    assert {p["name"] for p in rr_points if p["split"] == "test/fused"} >= HEADLINE  # the order search serves
    # The index of its candidate over this dataset gave the first stage's vectors (no second encoding):
    # the first stage's test figures are the embedder job's own figures for its chosen model.
    assert f"reused the vectors of index {index['id']}" in rr_job["message"], rr_job["message"]
    chosen_test = {p["name"]: p["value"] for p in points if p["split"] == "test" and p["step"] == test_steps[1]}
    first_stage = {p["name"]: p["value"] for p in rr_points if p["split"] == "test/first_stage"}
    for name in sorted(HEADLINE):
        assert first_stage[name] == pytest.approx(chosen_test[name], abs=1e-6), (name, first_stage, chosen_test)
    reranker_id = rr_job["model_id"]
    assert {m["id"]: m for m in client.get("/models").json()}[reranker_id]["kind"] == "reranker"
    _chained_reranker_starts_where_the_first_ended(service, dataset["id"], model_id, reranker_id, rr_points)

    # By default the reranker's own first-stage weight (0.5, from its job) fuses the two stages' scores.
    whole = {"index_id": index["id"], "query": query, "top_k": 20, "recall_k": 20, "reranker_id": reranker_id}
    fused_answer = client.post("/search", json=whole).json()
    fused_hits = fused_answer["results"]
    recall = np.array([h["recall_score"] for h in fused_hits])
    logits = np.array([h["rerank_score"] for h in fused_hits])
    expected = 0.5 * min_max(recall) + 0.5 * min_max(logits)
    assert [h["fused_score"] for h in fused_hits] == pytest.approx(expected.tolist(), abs=1e-6)
    order_key = "score" if fused_answer["calibrated"] else "fused_score"  # a calibrated score orders the hits
    assert [h[order_key] for h in fused_hits] == sorted((h[order_key] for h in fused_hits), reverse=True)

    # Weight 0: the reranker's order alone.
    body = {**whole, "top_k": 5, "first_stage_weight": 0.0}
    reranked = client.post("/search", json=body)
    assert reranked.status_code == 200, reranked.text
    hits = reranked.json()["results"]
    assert len(hits) == 5
    assert all(0.0 <= h["score"] <= 1.0 and h["rerank_score"] is not None and h["fused_score"] is None for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # Server-Timing: the service's own time by stage; the cross-encoder pass is most of it.
    timing = dict(part.strip().split(";dur=") for part in reranked.headers["Server-Timing"].split(","))
    assert set(timing) == {"load", "recall", "rerank", "total"}
    assert 0 < float(timing["rerank"]) <= float(timing["total"]), timing
    # Deterministic: the same request gives the same scores.
    assert client.post("/search", json=body).json()["results"] == hits

    cut = hits[2]["score"]
    thresholded = client.post("/search", json={**body, "threshold": cut})
    if reranked.json()["calibrated"]:  # the threshold reads the calibrated score that orders the hits
        kept = thresholded.json()["results"]
        assert kept and all(h["score"] >= cut for h in kept)
        assert len(kept) <= 3 + sum(h["score"] == cut for h in hits[3:])
    else:  # no calibration fitted (e.g. too few validation judgements): refused, naming the model and cause
        assert thresholded.status_code == 422, thresholded.text
        assert reranker_id in thresholded.json()["detail"] and "calibration" in thresholded.json()["detail"]

    # The int8 path reranks the same candidates with a quantised copy: scores stay normalised.
    quantised = client.post("/search", json={**body, "int8": True})
    assert quantised.status_code == 200, quantised.text
    assert {h["doc_id"] for h in quantised.json()["results"]} <= set(recalled_ids(client, {**body, "int8": True}))
    assert all(0.0 <= h["score"] <= 1.0 and h["rerank_score"] is not None for h in quantised.json()["results"])


def _chained_reranker_starts_where_the_first_ended(
    service: Service, dataset_id: str, candidate_model: str, reranker_id: str, first_points: list[dict]
) -> None:
    """A reranker job whose base_model is a trained reranker starts from that model, head included
    (the recipe that beat the bi-encoder on Cranfield): its step-0 evaluation reproduces the first
    job's best evaluation on the same queries and candidates; a new head would score differently."""
    fused = {
        p["step"]: p["value"]
        for p in first_points
        if p["split"] == "validation/fused" and p["name"] == "ndcg@10" and p["step"] > 0
    }
    best_step = max(fused, key=lambda step: (fused[step], -step))  # BestModel keeps the first best
    first_best = {p["name"]: p["value"] for p in first_points if p["step"] == best_step and p["split"] == "validation"}

    chained = service.client.post(
        "/jobs",
        json={
            "kind": "reranker",
            "dataset_id": dataset_id,
            "base_model": reranker_id,
            "eval": {"split": "test"},
            "params": {**TINY_RERANKER, "candidate_model": candidate_model},
        },
    )
    assert chained.status_code == 202, chained.text
    job, _ = _watch_job(service, chained.json()["id"])
    assert job["status"] == "succeeded", (job, service.log_tail())
    assert job["base_model"] == reranker_id
    points = service.client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    step0 = {p["name"]: p["value"] for p in points if p["step"] == 0 and p["split"] == "validation"}
    for name in (*sorted(HEADLINE), "score_std"):
        assert step0[name] == pytest.approx(first_best[name], abs=1e-6), (name, step0, first_best)


def _chained_job_evaluating_on_trained_queries_is_refused(service: Service, dataset_id: str, model_id: str) -> None:
    """The fine-tuned model trained on this dataset's training queries: a job starting from it that holds
    some of those queries out as test queries would report on what the model has learnt."""
    body = {"kind": "embedder", "dataset_id": dataset_id, "base_model": model_id, "eval": {"holdout_fraction": 0.5},
            "params": TINY_EMBEDDER}  # fmt: skip
    refused = service.client.post("/jobs", json=body)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert f"base_model '{model_id}' was trained on" in detail and "allow_overlap" in detail
    count = int(detail.split("was trained on ")[1].split()[0])
    assert count > 0
    allowed = service.client.post("/jobs", json=body | {"eval": {"holdout_fraction": 0.5, "allow_overlap": True}})
    assert allowed.status_code == 202, allowed.text
    assert allowed.json()["eval"]["contaminated"] is True
    service.client.post(f"/jobs/{allowed.json()['id']}/cancel")  # its metrics' labels are a unit test's concern
    # The official test split was never trained on: no refusal.
    clean = service.client.post("/jobs", json=body | {"eval": {"split": "test"}})
    assert clean.status_code == 202, clean.text
    assert "contaminated" not in clean.json()["eval"]
    service.client.post(f"/jobs/{clean.json()['id']}/cancel")


def recalled_ids(client: httpx.Client, body: dict) -> list[str]:
    """The first stage's candidates for a search body (no reranker, same recall_k)."""
    plain = {k: v for k, v in body.items() if k != "reranker_id"} | {"top_k": body["recall_k"]}
    return [h["doc_id"] for h in client.post("/search", json=plain).json()["results"]]


@pytest.mark.integration
def test_cancel_running_and_queued_jobs(service: Service, scifact_zip: bytes) -> None:
    client = service.client
    dataset = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)}).json()
    body = {"kind": "embedder", "dataset_id": dataset["id"], "params": {**TINY_EMBEDDER, "max_steps": 500}}
    running = client.post("/jobs", json=body).json()
    service.wait_for(f"/jobs/{running['id']}", lambda j: j["status"] == "running" and j["step"] >= 1)
    cancelled = client.post(f"/jobs/{running['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in {"cancelling", "cancelled"}
    job = service.wait_for(f"/jobs/{running['id']}", job_finished, timeout=120)
    assert job["status"] == "cancelled", job
    assert "cancelled at step" in job["message"]
    assert job["step"] < 500 and job["model_id"] is None
    assert client.post(f"/jobs/{running['id']}/cancel").status_code == 409
