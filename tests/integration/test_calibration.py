"""A model without a fitted calibration: `/models` says why, and `/search` refuses a threshold on it (422)
instead of filtering on a number that is no probability; without a threshold it answers as before."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Service


@pytest.mark.integration
def test_threshold_on_an_uncalibrated_model_is_a_422_naming_the_cause(service: Service, scifact_zip: bytes) -> None:
    client = service.client
    bundled = client.get("/models/all-MiniLM-L6-v2")
    assert bundled.status_code == 200, bundled.text
    assert bundled.json()["calibration"] is None
    assert "no calibration fitted" in bundled.json()["calibration_missing"]
    listed = {m["id"]: m for m in client.get("/models").json()}
    assert listed["all-MiniLM-L6-v2"]["calibration_missing"] == bundled.json()["calibration_missing"]

    dataset = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)})
    assert dataset.status_code == 201, dataset.text
    created = client.post("/indexes", json={"dataset_id": dataset.json()["id"], "model_id": "all-MiniLM-L6-v2"})
    assert created.status_code == 202, created.text
    index = service.wait_for(f"/indexes/{created.json()['id']}", lambda i: i["status"] != "building")
    assert index["status"] == "ready", index

    body = {"index_id": index["id"], "query": "Vitamin D deficiency increases infection risk", "top_k": 5}
    refused = client.post("/search", json={**body, "threshold": 0.5})
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "'all-MiniLM-L6-v2'" in detail and "no calibration fitted" in detail and "threshold" in detail

    answered = client.post("/search", json=body)
    assert answered.status_code == 200, answered.text
    assert answered.json()["calibrated"] is False and answered.json()["calibration_map"] is None
    hits = answered.json()["results"]
    assert len(hits) == 5 and all(h["score"] == h["recall_score"] for h in hits)  # the cosine, as before
