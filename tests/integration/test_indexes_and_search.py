"""Index versions behind an alias, switched while searches run; batch queries; the int8 path."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.conftest import Service

QUERIES = [
    "Vitamin D deficiency is associated with an increased risk of infection.",
    "Exercise improves insulin sensitivity.",
    "Smoking causes lung cancer.",
]


def _build(service: Service, dataset_id: str, index_type: str) -> dict:
    created = service.client.post(
        "/indexes", json={"dataset_id": dataset_id, "model_id": "all-MiniLM-L6-v2", "index_type": index_type}
    )
    assert created.status_code == 202, created.text
    return created.json()


def _ready(service: Service, index_id: str) -> dict:
    return service.wait_for(f"/indexes/{index_id}", lambda i: i["status"] != "building", timeout=300)


@pytest.mark.integration
@pytest.mark.parametrize("service", ["postgres-s3"], indirect=True)  # the production layout is enough here
def test_alias_switch_while_searching_and_batch_queries(service: Service, scifact_zip: bytes) -> None:
    client = service.client
    dataset = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)}).json()
    v1 = _ready(service, _build(service, dataset["id"], "flat")["id"])
    assert v1["status"] == "ready" and v1["index_type"] == "flat" and v1["memory_bytes"] >= 162 * 384 * 4

    assert client.put("/aliases/scifact", json={"index_id": v1["id"]}).json()["index_id"] == v1["id"]
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    switched_at: list[int] = []

    def keep_searching() -> None:
        body = {"index_id": "scifact", "query": QUERIES[0], "top_k": 3, "recall_k": 20}
        while not stop.is_set():
            response = client.post("/search", json=body)
            if response.status_code == 200:
                answered.append(response.json()["index_id"])
            else:
                failures.append(f"{response.status_code} {response.text}")

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    try:
        building = _build(service, dataset["id"], "hnsw")  # a new version is built while searches run
        v2 = _ready(service, building["id"])
        assert v2["status"] == "ready" and v2["index_type"] == "hnsw"
        switched = client.put("/aliases/scifact", json={"index_id": v2["id"]})
        assert switched.status_code == 200, switched.text
        switched_at.append(len(answered))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(answered) < switched_at[0] + 5:
            time.sleep(0.1)
    finally:
        stop.set()
        searcher.join(timeout=60)

    assert not failures, failures[:3]
    assert set(answered) <= {v1["id"], v2["id"]}
    first_v2 = answered.index(v2["id"])
    assert all(a == v1["id"] for a in answered[:first_v2]) and all(a == v2["id"] for a in answered[first_v2:])
    assert first_v2 <= switched_at[0] + 1  # at most the request in flight during the switch saw v1
    assert len(answered) > switched_at[0], "searches went on after the switch"

    batch = client.post("/search", json={"index_id": "scifact", "queries": QUERIES, "top_k": 5, "recall_k": 30})
    assert batch.status_code == 200, batch.text
    lists = batch.json()["batch"]
    assert len(lists) == 3 and batch.json()["results"] == lists[0]
    single = client.post("/search", json={"index_id": v2["id"], "query": QUERIES[1], "top_k": 5, "recall_k": 30})
    assert [h["doc_id"] for h in single.json()["results"]] == [h["doc_id"] for h in lists[1]]
    assert client.post("/search", json={"index_id": "scifact", "query": "x", "queries": ["y"]}).status_code == 422

    exact = client.post("/search", json={"index_id": v1["id"], "query": QUERIES[0], "top_k": 5}).json()["results"]
    quantized = client.post("/search", json={"index_id": v1["id"], "query": QUERIES[0], "top_k": 5, "int8": True})
    assert quantized.status_code == 200, quantized.text
    overlap = {h["doc_id"] for h in exact} & {h["doc_id"] for h in quantized.json()["results"]}
    assert len(overlap) >= 3, (exact, quantized.json())
