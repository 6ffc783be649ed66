"""The API a dashboard and a CLI need: job events (poll and SSE), metric filters, pagination, deletes,
/metrics, the index refusal of a training file, and the one error shape."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import scifact_slice_zip
from tests.integration.conftest import BEIR_TINY, TRAINING_LINE, Service, job_finished, upload_beir

TINY_JOB = {"max_steps": 3, "batch_size": 4, "passage_max_len": 64, "logging_steps": 1, "max_train_queries": 8}
TINY_EVAL = {"split": "test", "max_queries": 4, "max_corpus_docs": 30}
# Four documents, one judged test query and two judged training queries (one of them for validation).
BEIR_TWO_TRAINING = BEIR_TINY | {
    "corpus.jsonl": BEIR_TINY["corpus.jsonl"] + '{"_id": "d4", "text": "delta"}\n',
    "queries.jsonl": BEIR_TINY["queries.jsonl"] + '{"_id": "q3", "text": "third"}\n',
    "qrels/train.tsv": BEIR_TINY["qrels/train.tsv"] + "q3\td4\t1\n",
}


def _sse(service: Service, job_id: str, last_event_id: int | None = None, stop_after: int | None = None) -> list[dict]:
    """Events read from the stream (all of it, or the first ``stop_after`` and then hang up)."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    received: list[dict] = []
    fields: dict[str, str] = {}
    with service.client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
                continue
            if "data" in fields:  # a blank line ends an event
                received.append(json.loads(fields["data"]))
                assert str(received[-1]["id"]) == fields["id"], "the SSE id is the event's own id"
                if stop_after is not None and len(received) >= stop_after:
                    break
            fields = {}
    return received


def _all_events(service: Service, job_id: str, page: int = 3) -> list[dict]:
    """Every event by polling with ``after``, a few per page."""
    events: list[dict] = []
    after = None
    while True:
        params = {"limit": page, **({"after": after} if after is not None else {})}
        body = service.client.get(f"/jobs/{job_id}/events", params=params).json()
        assert all(e["id"] > (after or 0) for e in body["data"]), "after returns only newer events"
        events += body["data"]
        if not body["has_more"]:
            return events
        after = body["data"][-1]["id"]


@pytest.mark.integration
@pytest.mark.slow
def test_events_sse_resume_metrics_filters_and_job_delete(service: Service) -> None:
    client = service.client
    zipped = scifact_slice_zip(n_train=8, n_test=4, n_distractors=10)
    dataset = client.post("/datasets", files={"file": ("s.zip", zipped)}).json()
    created = client.post(
        "/jobs", json={"kind": "embedder", "dataset_id": dataset["id"], "eval": TINY_EVAL, "params": TINY_JOB}
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    refused = client.delete(f"/jobs/{job_id}")
    assert refused.status_code == 409 and job_id in refused.json()["detail"], refused.text

    first = _sse(service, job_id, stop_after=2)  # hang up after two events...
    rest = _sse(service, job_id, last_event_id=first[-1]["id"])  # ...and resume: the stream ends with the job
    job = client.get(f"/jobs/{job_id}").json()
    assert job_finished(job) and job["status"] == "succeeded", (job, service.log_tail())

    polled = _all_events(service, job_id)
    assert [e["id"] for e in first + rest] == [e["id"] for e in polled], "a reconnect loses and repeats nothing"
    statuses = [e["data"]["status"] for e in polled if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"], statuses
    metrics = [e for e in polled if e["type"] == "metrics"]
    assert {0, 3} <= {e["data"]["step"] for e in metrics if e["data"]["split"] != "train"}
    assert any("loss" in e["data"] for e in metrics) and any("ndcg@10" in e["data"] for e in metrics)
    assert any(e["type"] == "message" and e["message"] in job["message"] for e in polled)
    assert polled[1]["id"] > polled[0]["id"]
    newer = client.get(f"/jobs/{job_id}/events", params={"after": polled[-2]["id"]}).json()["data"]
    assert [e["id"] for e in newer] == [polled[-1]["id"]]

    points = client.get(f"/jobs/{job_id}/metrics").json()["points"]
    later = client.get(f"/jobs/{job_id}/metrics", params={"after_step": 1}).json()["points"]
    assert later == [p for p in points if p["step"] > 1] and later and len(later) < len(points)
    losses = client.get(f"/jobs/{job_id}/metrics", params=[("name", "loss"), ("name", "ndcg@10")]).json()["points"]
    assert losses == [p for p in points if p["name"] in {"loss", "ndcg@10"}] and losses

    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{job_id}/events").status_code == 404
    assert not (service.data_dir / "work" / job_id).exists()
    assert not service.store.leftovers(f"work/{job_id}"), "nor its stored checkpoints"
    assert client.get(f"/models/{job['model_id']}").status_code == 200, "the model a deleted job made stays"


@pytest.mark.integration
def test_lists_paginate_with_headers_and_filter(service: Service) -> None:
    client = service.client
    made = [upload_beir(service, f"page-{i}")["id"] for i in range(3)]
    seen: list[str] = []
    url: str | None = "/datasets?limit=2"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200 and isinstance(response.json(), list)
        seen += [d["id"] for d in response.json()]
        pages += 1
        link = response.headers.get("link")
        assert (response.headers["x-has-more"] == "true") == (link is not None)
        url = httpx.Response(200, headers={"link": link}).links["next"]["url"] if link else None
    assert len(seen) == len(set(seen)) and set(made) <= set(seen) and pages >= 2
    assert client.get("/datasets").json()[0]["id"] == made[-1], "newest first"

    jobs = [
        client.post("/jobs", json={"kind": "embedder", "dataset_id": made[0], "params": {"max_steps": 1}}).json(),
        client.post("/jobs", json={"kind": "embedder", "dataset_id": made[1], "params": {"max_steps": 1}}).json(),
    ]
    for job in jobs:  # a fast worker may have finished it already (409): either way it ends
        assert client.post(f"/jobs/{job['id']}/cancel").status_code in (200, 409)
    final = [service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=300) for job in jobs]
    only = client.get("/jobs", params={"dataset_id": made[0]})
    assert [j["id"] for j in only.json()] == [jobs[0]["id"]] and only.headers["x-has-more"] == "false"
    one = client.get("/jobs", params={"kind": "embedder", "limit": 1})
    assert len(one.json()) == 1 and one.headers["x-has-more"] == "true" and 'rel="next"' in one.headers["link"]
    same_status = client.get("/jobs", params={"status": final[0]["status"]}).json()
    assert jobs[0]["id"] in {j["id"] for j in same_status}
    assert all(j["status"] == final[0]["status"] for j in same_status)
    assert client.get("/jobs", params={"kind": "mine_negatives", "dataset_id": made[0]}).json() == []
    statuses = [e["data"]["status"] for e in client.get(f"/jobs/{jobs[0]['id']}/events").json()["data"]
                if e["type"] == "status"]  # fmt: skip
    assert statuses[0] == "queued" and statuses[-1] == final[0]["status"], statuses
    for path in ("/models", "/indexes", "/aliases", "/jobs"):
        response = client.get(path, params={"limit": 1})
        assert response.status_code == 200 and len(response.json()) <= 1 and "x-has-more" in response.headers
    bad = client.get("/jobs", params={"after": "nope"})
    assert bad.status_code == 404 and "nope" in bad.json()["detail"]


@pytest.mark.integration
def test_index_delete_alias_conflict_and_training_file_refused(service: Service) -> None:
    client = service.client
    training = client.post("/datasets", files={"file": ("train.jsonl", TRAINING_LINE.encode())}).json()
    refused = client.post("/indexes", json={"dataset_id": training["id"], "model_id": "all-MiniLM-L6-v2"})
    assert refused.status_code == 422 and "corpus.jsonl" in refused.json()["detail"], refused.text

    dataset = upload_beir(service, "to-index", BEIR_TWO_TRAINING)
    index = client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": "all-MiniLM-L6-v2"}).json()
    index = service.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] != "building", timeout=300)
    assert index["status"] == "ready", index
    # A job on the indexed model and dataset reads its step 0's vectors from the index: no second encoding.
    body = {"kind": "embedder", "dataset_id": dataset["id"], "eval": {"split": "test"}, "params": {"max_steps": 1}}
    job = client.post("/jobs", json=body)
    job = service.wait_for(f"/jobs/{job.json()['id']}", job_finished, timeout=300)
    assert job["status"] == "succeeded", (job, service.log_tail())
    assert f"step 0: reused the vectors of index {index['id']} (4 passages)" in job["message"], job["message"]
    assert client.put("/aliases/to-delete", json={"index_id": index["id"]}).status_code == 200
    conflict = client.delete(f"/indexes/{index['id']}")
    assert conflict.status_code == 409 and "to-delete" in conflict.json()["detail"], conflict.text
    assert client.delete("/aliases/to-delete").status_code == 204
    assert client.get("/aliases/to-delete").status_code == 404
    assert client.delete("/aliases/to-delete").status_code == 404
    assert service.store.exists(f"indexes/{index['id']}")
    assert client.delete(f"/indexes/{index['id']}").status_code == 204
    assert client.get(f"/indexes/{index['id']}").status_code == 404
    assert not service.store.leftovers(f"indexes/{index['id']}")


@pytest.mark.integration
def test_metrics_exposition_and_access(service: Service) -> None:
    client = service.client
    client.post("/search", json={"index_id": "nope", "query": "x"})  # one answered request at least
    reader_key = client.post("/keys", json={"name": "metrics-reader", "scope": "read"}).json()["key"]
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {reader_key}"}) as reader:
        assert reader.get("/metrics").status_code == 403
    assert httpx.get(f"{service.url}/metrics").status_code == 401
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'te_request_count_total{method="POST",route="/search",status="404"}' in text
    for series in ("te_request_duration_bucket", "retune_jobs{", "retune_queue_depth", "retune_workers_seen_alive"):
        assert series in text, series


@pytest.mark.integration
def test_validation_errors_have_one_shape(service: Service) -> None:
    client = service.client
    response = client.post("/search", json={"index_id": "x", "query": "q", "top_k": 0})
    assert response.status_code == 422
    body = response.json()
    assert isinstance(body["detail"], str) and body["field"] == "top_k" and "top_k:" in body["detail"]
    unparsable = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert unparsable.status_code == 400 and isinstance(unparsable.json()["detail"], str)
    query = client.get("/jobs", params={"limit": 0})
    assert query.status_code == 422 and query.json()["field"] == "limit"


@pytest.mark.integration
def test_failed_job_is_a_failed_task_and_its_log_lines_name_it(service: Service) -> None:
    """One judged training query cannot be split into training and held-out queries: the job fails."""
    dataset = upload_beir(service, "fails")
    created = service.client.post("/jobs", json={"kind": "embedder", "dataset_id": dataset["id"]})
    assert created.status_code == 202, created.text
    job = service.wait_for(f"/jobs/{created.json()['id']}", job_finished, timeout=300)
    assert job["status"] == "failed", job
    log = service.wait_for_log(f"JobFailedError: job {job['id']} failed")  # Celery logs it after the job fails
    assert f"[job {job['id']}]" in log, "the worker's lines of the job carry its id"
    events = service.client.get(f"/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["type"] == "status" and events[-1]["level"] == "error"
    assert events[-1]["data"]["status"] == "failed" and job["error"].splitlines()[0] in events[-1]["message"]
